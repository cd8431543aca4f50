"""Sandbox privileges and anti-spoofing (issue 19), on a test network of this host.

Real sandboxes on a real bridge: the default capability set (no NET_ADMIN, no NET_RAW, ping
through ping_group_range), ``--user``, ``--cap-add NET_ADMIN`` with the bridge dropping frames
from foreign addresses and MACs, ``--privileged`` and ``--allow-spoof`` (which does let a
sandbox take a neighbour's address: the control that shows the checks can fail), ``audit``,
``/sys`` of the sandbox's namespace, and nothing left after ``rm`` or ``kill -9``.

Not in a hostns.py namespace: ``exec`` must enter the sandbox's namespace from another process,
and a netns bind mount made under ``ip netns exec`` lives only in that command's mount
namespace. Everything here stays on the test's own bridge and addresses (198.18.219.0/24);
the only host state touched is ours (the bridge's neighbour entries, our nft elements).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from pwutil import pw, temp_network

SANDBOX_CAPEFF = "00000000a80405fb"  # Docker's default set without NET_RAW
UDP_PORT = 39119
_T = secrets.token_hex(2)
N = {n: f"{n}-{_T}" for n in ("d1", "v1", "a1", "c1", "p1", "s1", "k1", "k2")}


class Host:
    """This host, with the test network's name: portwright and commands run here."""

    def __init__(self, net: str) -> None:
        self.net = net

    def pw(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return pw(*args, check=check)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p


HostNS = Host


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    with temp_network("--subnet", "198.18.219.0/24", prefix="n19") as net:
        yield Host(net)


def _run_d(h: HostNS, name: str, *flags: str) -> dict[str, object]:
    h.pw("run", "-d", "--name", name, "--network", h.net, *flags, "--", "sleep", "600")
    rec: dict[str, object] = json.loads(h.pw("inspect", "--format", "json", name).stdout)
    return rec


def _net(rec: dict[str, object]) -> dict[str, str]:
    return rec["NetworkSettings"]  # type: ignore[return-value]


def _exec(h: HostNS, name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return h.pw("exec", name, "--", *cmd, check=check)


def _bridge_table(h: HostNS) -> str:
    p = h.run("nft", "-j", "list", "table", "bridge", "portwright_antispoof", check=False)
    return p.stdout if p.returncode == 0 else ""


def _neigh_mac(h: HostNS, ip: str) -> str | None:
    for n in json.loads(h.run("ip", "-j", "neigh", "show", ip).stdout or "[]"):
        if n.get("lladdr"):
            return str(n["lladdr"])
    return None


def test_default_sandbox_has_dockers_caps_and_cannot_touch_its_network(host: HostNS) -> None:
    rec = _run_d(host, N["d1"])
    gw = _net(rec)["Gateway"]
    try:
        status = _exec(host, N["d1"], "cat", "/proc/self/status").stdout
        assert re.search(rf"CapEff:\s+{SANDBOX_CAPEFF}", status), status
        assert re.search(r"NoNewPrivs:\s+1", status)
        hc = json.loads(host.pw("inspect", "--format", "json", N["d1"]).stdout)["HostConfig"]
        assert "NET_RAW" not in hc["EffectiveCaps"] and "NET_ADMIN" not in hc["EffectiveCaps"]
        assert hc["CmdCapEff"] == SANDBOX_CAPEFF  # the running CMD's own mask, from /proc
        p = _exec(host, N["d1"], "ip", "addr", "add", "198.18.219.200/32", "dev", "eth0", check=False)
        assert p.returncode != 0 and "not permitted" in p.stderr
        p = _exec(host, N["d1"], "ip", "link", "set", "eth0", "address", "02:00:00:00:19:19", check=False)
        assert p.returncode != 0 and "not permitted" in p.stderr
        raw = "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)"
        p = _exec(host, N["d1"], "python3", "-c", raw, check=False)
        assert p.returncode != 0 and "PermissionError" in p.stderr
        assert _exec(host, N["d1"], "ping", "-c", "1", "-W", "2", gw).returncode == 0
        # /sys shows the sandbox's namespace, for exec and for CMD
        assert (
            _exec(host, N["d1"], "cat", "/sys/class/net/eth0/address").stdout.strip()
            == _net(rec)["MacAddress"]
        )
        out = host.pw("run", "--rm", "--network", host.net, "--", "ls", "/sys/class/net").stdout.split()
        assert sorted(out) == ["eth0", "lo"]
    finally:
        host.pw("rm", "-f", N["d1"])


def test_user_runs_cmd_as_that_user_without_capabilities(host: HostNS) -> None:
    out = host.pw(
        "run",
        "--rm",
        "--network",
        host.net,
        "--user",
        "65534",
        "--",
        "sh",
        "-c",
        "id -u; id -g; grep CapEff /proc/self/status",
    ).stdout.split()
    assert out[:2] == ["65534", "65534"]  # nobody's passwd group, as Docker
    assert out[-1] == "0000000000000000"
    out = host.pw(
        "run", "--rm", "--network", host.net, "-u", "1234:4321", "--", "sh", "-c", "id -u; id -g"
    ).stdout.split()
    assert out == ["1234", "4321"]


def _listen_udp(h: HostNS, addr: str) -> subprocess.Popen[str]:
    code = (
        "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(({addr!r}, {UDP_PORT})); s.settimeout(4); print('ready', flush=True)\n"
        "try:\n d, a = s.recvfrom(100); print(a[0], d.decode(), flush=True)\n"
        "except socket.timeout:\n print('nothing', flush=True)"
    )
    p = subprocess.Popen(["python3", "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def _send_from(h: HostNS, name: str, src: str, dst: str) -> None:
    code = (
        "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(({src!r}, 0)); [s.sendto(b'spoof', ({dst!r}, {UDP_PORT})) for _ in range(3)]"
    )
    _exec(h, name, "python3", "-c", code)


def _spoof_attempt(h: HostNS, attacker: str, victim_ip: str, gw: str) -> tuple[str, str | None]:
    """``attacker`` takes ``victim_ip``, sends UDP from it to the host and a gratuitous ARP for
    it. Returns (what the host's UDP socket received, the host's MAC for victim_ip)."""
    _exec(h, attacker, "ip", "addr", "add", f"{victim_ip}/32", "dev", "eth0")
    listener = _listen_udp(h, gw)
    _send_from(h, attacker, victim_ip, gw)
    got, _ = listener.communicate(timeout=10)
    time.sleep(1.2)  # past the neighbour entry's locktime (1 s), so an ARP could override it
    _exec(
        h,
        attacker,
        "arping",
        "-U",
        "-c",
        "2",
        "-w",
        "2",
        "-I",
        "eth0",
        "-s",
        victim_ip,
        victim_ip,
        check=False,
    )
    time.sleep(0.3)
    mac = _neigh_mac(h, victim_ip)
    _exec(h, attacker, "ip", "addr", "del", f"{victim_ip}/32", "dev", "eth0", check=False)
    return got.strip(), mac


def test_net_admin_changes_its_address_but_the_bridge_drops_foreign_ip_and_mac(host: HostNS) -> None:
    victim = _run_d(host, N["v1"])
    attacker = _run_d(host, N["a1"], "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW")
    control = _run_d(host, N["c1"], "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", "--allow-spoof")
    gw, vip, vmac = _net(victim)["Gateway"], _net(victim)["IPAddress"], _net(victim)["MacAddress"]
    try:
        host.run("ping", "-c", "1", "-W", "2", vip)  # the host learns the victim's MAC
        assert _neigh_mac(host, vip) == vmac
        # its own address: allowed, and traffic from it passes
        listener = _listen_udp(host, gw)
        _send_from(host, N["a1"], _net(attacker)["IPAddress"], gw)
        got, _ = listener.communicate(timeout=10)
        assert got.strip() == f"{_net(attacker)['IPAddress']} spoof"
        # a neighbour's address: the host hears nothing and keeps the victim's MAC
        got, mac = _spoof_attempt(host, N["a1"], vip, gw)
        assert got == "nothing" and mac == vmac
        # the control (--allow-spoof): the same attempt reaches the host and takes the address
        got, mac = _spoof_attempt(host, N["c1"], vip, gw)
        assert got == f"{vip} spoof" and mac == _net(control)["MacAddress"]
        # a foreign MAC: NET_ADMIN may set it, but nothing it sends gets through
        _exec(host, N["a1"], "ip", "link", "set", "eth0", "address", "02:42:c6:12:db:99")
        assert _exec(host, N["a1"], "ping", "-c", "1", "-W", "1", gw, check=False).returncode != 0
        _exec(host, N["a1"], "ip", "link", "set", "eth0", "address", _net(attacker)["MacAddress"])
        assert _exec(host, N["a1"], "ping", "-c", "1", "-W", "2", gw).returncode == 0
    finally:
        host.pw("rm", "-f", N["v1"], N["a1"], N["c1"])


def test_privileged_and_allow_spoof_work_and_audit_reports_them(host: HostNS) -> None:
    _run_d(host, N["p1"], "--privileged")
    _run_d(host, N["s1"], "--allow-spoof")
    try:
        status = _exec(host, N["p1"], "cat", "/proc/self/status").stdout
        assert re.search(r"NoNewPrivs:\s+0", status)
        assert _exec(host, N["p1"], "ip", "addr", "add", "198.18.219.201/32", "dev", "eth0").returncode == 0
        table = _bridge_table(host)
        ports = json.loads(host.pw("inspect", "--format", "json", N["p1"]).stdout)["NetworkSettings"][
            "HostVeth"
        ]
        spoof_port = json.loads(host.pw("inspect", "--format", "json", N["s1"]).stdout)["NetworkSettings"][
            "HostVeth"
        ]
        assert ports in table and spoof_port not in table  # --privileged does not lift anti-spoofing
        rep = json.loads(host.pw("audit", "--json", check=False).stdout)
        codes = {(f["code"], f["subject"]) for f in rep["findings"]}
        assert ("privileged", f"sandbox {N['p1']}") in codes and ("spoofable", f"sandbox {N['s1']}") in codes
    finally:
        host.pw("rm", "-f", N["p1"], N["s1"])


def test_nothing_left_after_rm_or_kill_9(host: HostNS) -> None:
    a = _run_d(host, N["k1"])
    b = _run_d(host, N["k2"])
    veths = [_net(a)["HostVeth"], _net(b)["HostVeth"]]
    assert all(v in _bridge_table(host) for v in veths)
    host.pw("rm", "-f", N["k1"])
    assert veths[0] not in _bridge_table(host) and veths[1] in _bridge_table(host)
    sup = json.loads(host.pw("inspect", "--format", "json", N["k2"]).stdout)["State"]["SupervisorPid"]
    os.kill(int(sup), signal.SIGKILL)
    cmd_pid = json.loads(host.pw("inspect", "--format", "json", N["k2"]).stdout)["State"]["Pid"]
    if cmd_pid:
        try:
            os.kill(int(cmd_pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    host.pw("ps", "-a")  # any command reconciles
    deadline = time.monotonic() + 10
    while veths[1] in _bridge_table(host) and time.monotonic() < deadline:
        time.sleep(0.2)
        host.pw("ps", "-a")
    table = _bridge_table(host)
    assert veths[1] not in table
    for rec in (a, b):  # no element of either is left (the host's other sandboxes may have some)
        assert f'"comment": "pw:{rec["Id"]}"' not in table
    host.pw("rm", "-f", N["k2"], check=False)


def test_anti_spoofing_comes_back_after_nft_flush_ruleset() -> None:
    """A firewall reload (``nft flush ruleset``) in a namespace that plays the host: the
    sandbox's anti-spoofing elements are put back, as its NAT elements are (issue 13's recovery)."""
    from hostns import host_namespace

    with host_namespace("pwq") as h:
        h.pw("network", "create", "n19f", "--subnet", "198.18.218.0/24")
        h.pw("run", "-d", "--name", "f1", "--network", "n19f", "--", "sleep", "600")
        veth = json.loads(h.pw("inspect", "--format", "json", "f1").stdout)["NetworkSettings"]["HostVeth"]

        def table() -> str:
            p = h.run("nft", "-j", "list", "table", "bridge", "portwright_antispoof", check=False)
            return p.stdout if p.returncode == 0 else ""

        assert veth in table()
        h.run("nft", "flush", "ruleset")  # inside the throwaway namespace only
        deadline = time.monotonic() + 10
        while veth not in table() and time.monotonic() < deadline:
            time.sleep(0.2)
        if veth not in table():
            h.pw("ps")  # any command's reconcile restores too
        t = table()
        assert veth in t and '"antispoof"' in t and "port_nd" in t
        h.pw("rm", "-f", "f1")
        assert veth not in table()
