"""Core lifecycle against the real kernel: networks, sandboxes, addresses, isolation, crash cleanup,
and bad input that leaves nothing behind. Drives the real CLI."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from pwutil import bridge_ports, inspect, link_names, netns_names, pw, temp_network, uniq, wait_tcp

from conftest import External, sh

pytestmark = pytest.mark.integration


@pytest.fixture
def net() -> Iterator[str]:
    with temp_network("--ipv6") as name:
        yield name


def test_network_lifecycle() -> None:
    name = uniq("n")
    pw("network", "create", name, "--subnet", "198.18.201.0/24", "--ipv6")
    try:
        nets = json.loads(pw("network", "ls", "--format", "json").stdout)
        mine = next(n for n in nets if n["Name"] == name)
        assert mine["IPAM"]["Config"][0] == {"Subnet": "198.18.201.0/24", "Gateway": "198.18.201.1"}
        subnet6 = ipaddress.IPv6Network(mine["IPAM"]["Config"][1]["Subnet"])
        assert subnet6.subnet_of(ipaddress.IPv6Network("2001:2::/48"))
        addrs = json.loads(sh("ip", "-j", "addr", "show", "dev", mine["Bridge"]).stdout)[0]["addr_info"]
        assert {"198.18.201.1", str(subnet6.network_address + 1)} <= {a["local"] for a in addrs}
        # An overlapping subnet and a duplicate name are refused, with nothing created.
        before = pw("network", "ls").stdout
        r = pw("network", "create", uniq("n"), "--subnet", "198.18.201.128/25", check=False)
        assert r.returncode != 0 and "overlaps" in r.stderr and r.stderr.count("\n") == 1
        r = pw("network", "create", name, check=False)
        assert r.returncode != 0 and "already exists" in r.stderr
        assert pw("network", "ls").stdout == before
        # No second bridge got an address in that range.
        addrs = json.loads(sh("ip", "-j", "-4", "addr", "show").stdout)
        assert [
            a["ifname"] for a in addrs if any(i["local"].startswith("198.18.201.") for i in a["addr_info"])
        ] == [mine["Bridge"]]
    finally:
        pw("network", "rm", name)
    assert mine["Bridge"] not in link_names()
    r = pw("network", "inspect", name, check=False)
    assert r.returncode != 0 and "not found" in r.stderr


def test_run_inspect_exec_curl_rm(net: str) -> None:
    name = uniq("web")
    # --bind :: serves both families (bindv6only is 0 in a fresh namespace)
    pw(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        net,
        "--",
        "python3",
        "-m",
        "http.server",
        "--bind",
        "::",
        "80",
    )
    info = inspect(name)
    ip4, ip6 = info["NetworkSettings"]["IPAddress"], info["NetworkSettings"]["GlobalIPv6Address"]
    assert (
        info["State"]["Status"] == "running"
        and info["NetworkSettings"]["SandboxKey"] == f"/run/netns/pw-{name}"
    )
    assert ipaddress.ip_address(ip4) in ipaddress.ip_network("198.18.0.0/15")
    assert ipaddress.ip_address(ip6) in ipaddress.ip_network("2001:2::/48")
    # The kernel agrees with inspect: ip -j inside the namespace shows both addresses on eth0.
    eth0 = json.loads(sh("ip", "-j", "addr", "show", "dev", "eth0", ns=f"pw-{name}").stdout)[0]
    assert {ip4, ip6} <= {a["local"] for a in eth0["addr_info"]}
    assert eth0["address"] == info["NetworkSettings"]["MacAddress"]
    routes = json.loads(sh("ip", "-j", "route", "show", "default", ns=f"pw-{name}").stdout)
    assert routes[0]["gateway"] == info["NetworkSettings"]["Gateway"]
    routes6 = json.loads(sh("ip", "-j", "-6", "route", "show", "default", ns=f"pw-{name}").stdout)
    assert routes6[0]["gateway"] == info["NetworkSettings"]["IPv6Gateway"]
    # portwright exec runs inside the namespace (like nsenter -t PID -n).
    out = pw("exec", name, "--", "ip", "-j", "addr", "show", "dev", "eth0").stdout
    assert ip4 in out
    wait_tcp(None, ip4, 80)
    r = sh("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ip4}:80/")
    assert r.stdout == "200"
    r = sh("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://[{ip6}]:80/")
    assert r.stdout == "200"
    ps = pw("ps").stdout
    assert name in ps and "Up" in ps
    veth = info["NetworkSettings"]["HostVeth"]
    pw("rm", "-f", name)
    assert f"pw-{name}" not in netns_names() and veth not in link_names()
    assert name not in pw("ps", "-a").stdout


def test_same_network_reach_other_network_isolated(net: str) -> None:
    other = uniq("n")
    pw("network", "create", other)
    try:
        a, b, c = uniq("a"), uniq("b"), uniq("c")
        for n, network in ((a, net), (b, net), (c, other)):
            pw("run", "-d", "--name", n, "--network", network, "--", "python3", "-m", "http.server", "8000")
        ip_b = inspect(b)["NetworkSettings"]["IPAddress"]
        ip_c = inspect(c)["NetworkSettings"]["IPAddress"]
        wait_tcp(f"pw-{a}", ip_b, 8000)
        assert sh("nc", "-z", "-w", "2", ip_b, "8000", ns=f"pw-{a}", check=False).returncode == 0
        wait_tcp(None, ip_c, 8000)  # c is up (the host reaches it) ...
        assert (
            sh("nc", "-z", "-w", "2", ip_c, "8000", ns=f"pw-{a}", check=False).returncode != 0
        )  # ... a does not
    finally:
        for n in (a, b, c):
            pw("rm", "-f", n, check=False)
        pw("network", "rm", other, check=False)


def test_concurrent_runs_get_distinct_addresses(net: str) -> None:
    names = [uniq("c") for _ in range(6)]

    def start(n: str) -> str:
        pw("run", "-d", "--name", n, "--network", net, "--", "sleep", "60")
        return str(inspect(n)["NetworkSettings"]["IPAddress"])

    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        ips = list(ex.map(start, names))
    assert len(set(ips)) == 6


def test_kill9_supervisor_then_any_command_cleans_up(net: str) -> None:
    name = uniq("k")
    pw("run", "-d", "--name", name, "--network", net, "-p", "127.0.0.1::80", "--", "sleep", "300")
    info = inspect(name)
    sup, veth = info["State"]["SupervisorPid"], info["NetworkSettings"]["HostVeth"]
    os.kill(sup, signal.SIGKILL)
    time.sleep(0.3)
    pw("ps")  # any command runs the reconcile pass
    assert f"pw-{name}" not in netns_names() and veth not in link_names()
    info = inspect(name)
    assert info["State"]["Status"] == "exited" and info["NetworkSettings"]["Mappings"] == []
    pw("rm", name)


def test_foreground_exit_code_and_cleanup(net: str) -> None:
    name = uniq("f")
    before_ns = netns_names()
    r = pw(
        "run",
        "--name",
        name,
        "--network",
        net,
        "--",
        "sh",
        "-c",
        "ip -o addr show dev eth0; exit 3",
        check=False,
    )
    assert r.returncode == 3 and "inet " in r.stdout
    assert netns_names() == before_ns and name not in pw("ps", "-a").stdout


def test_foreground_sigint_tears_down(net: str) -> None:
    name = uniq("s")
    p = subprocess.Popen(
        [sys.executable, "-m", "portwright", "run", "--name", name, "--network", net, "--", "sleep", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 15
    while f"pw-{name}" not in netns_names() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    rc = p.wait(15)
    assert rc == 130  # 128 + SIGINT, as a shell reports it
    assert f"pw-{name}" not in netns_names()


def test_network_none_and_stop(net: str) -> None:
    name = uniq("x")
    pw("run", "-d", "--name", name, "--network", "none", "--", "sleep", "60")
    links = json.loads(sh("ip", "-j", "link", "show", ns=f"pw-{name}").stdout)
    assert [link["ifname"] for link in links] == ["lo"]
    pw("stop", name)
    assert inspect(name)["State"]["Status"] == "exited"
    assert f"pw-{name}" not in netns_names()
    pw("rm", name)


def test_host_network_expose_conflict_names_owner() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        r = pw("run", "--network", "host", "--expose", str(port), "--", "true", check=False)
        assert r.returncode != 0 and f"pid {os.getpid()}" in r.stderr and str(port) in r.stderr
        # host-remap (issue 12): -p with --network host reserves the host port like any mode
        r = pw("run", "--network", "host", "-p", f"{port}:80", "--", "true", check=False)
        assert r.returncode != 0 and f"pid {os.getpid()}" in r.stderr and str(port) in r.stderr
    finally:
        s.close()
    r = pw("run", "--network", "host", "--", "sh", "-c", "exit 0")
    assert r.returncode == 0


BAD_RUNS = [
    (["-p", "70000:80"], "out of range"),
    (["-p", "80:80/foo"], "unknown protocol"),
    (["-p", "1.2.3:80:80"], "not an IP address"),
    (["-p", "9000-8000:80"], "reversed"),
    (["-p", "8000-8002:80-81"], "lengths"),
    (["--network", "nosuchnet"], "not found"),
    (["--publish-mode", "bogus"], "invalid choice"),
    (["-p", "198.51.100.7:8080:80"], "not an address of this host"),
]


@pytest.mark.parametrize("extra, fragment", BAD_RUNS)
def test_bad_input_one_line_nothing_left(net: str, extra: list[str], fragment: str) -> None:
    name = uniq("bad")
    before = (bridge_ports(net), pw("ps", "-a").stdout)
    args = ["run", "-d", "--name", name] + (extra if "--network" in extra else ["--network", net, *extra])
    r = pw(*args, "--", "sleep", "5", check=False)
    assert r.returncode != 0
    assert fragment in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f"pw-{name}" not in netns_names()
    assert (bridge_ports(net), pw("ps", "-a").stdout) == before


def test_missing_command_and_duplicate_name(net: str) -> None:
    before = (bridge_ports(net), pw("ps", "-a").stdout)
    for detach in ([], ["-d"]):
        r = pw(
            "run",
            *detach,
            "--network",
            net,
            "-p",
            "127.0.0.1::80",
            "--",
            "definitely-not-a-command",
            check=False,
        )
        assert r.returncode != 0 and "not found" in r.stderr and "Traceback" not in r.stderr
        assert (bridge_ports(net), pw("ps", "-a").stdout) == before
    name = uniq("d")
    pw("run", "-d", "--name", name, "--network", net, "--", "sleep", "60")
    ports_before = bridge_ports(net)
    r = pw("run", "-d", "--name", name, "--network", net, "--", "sleep", "60", check=False)
    assert r.returncode != 0 and "already exists" in r.stderr
    assert bridge_ports(net) == ports_before and inspect(name)["State"]["Status"] == "running"


def test_not_root_is_one_line() -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    probe = subprocess.run([*nobody, "-c", "import portwright"], capture_output=True, text=True)
    if probe.returncode != 0:  # e.g. a checkout under a 0700 directory (mktemp -d)
        pytest.skip(f"user nobody cannot import portwright from this checkout: {probe.stderr.strip()[-120:]}")
    r = subprocess.run(
        [*nobody, "-m", "portwright", "network", "create", "zz"],
        capture_output=True,
        text=True,
        env={**os.environ, "PORTWRIGHT_STATE_DIR": "/tmp/pw-nobody"},
    )
    assert r.returncode != 0 and "root" in r.stderr and "Traceback" not in r.stderr


def test_missing_tool_names_package(tmp_path: os.PathLike[str]) -> None:
    # A PATH with iproute2 but no nft: creating a network must say which package to install,
    # and roll back the bridge it had already made.
    bindir = os.path.join(str(tmp_path), "bin")
    os.mkdir(bindir)
    for tool in ("ip", "sysctl", "iptables", "ip6tables"):
        src = subprocess.run(
            ["sh", "-c", f"command -v {tool}"], capture_output=True, text=True
        ).stdout.strip()
        if src:
            os.symlink(src, os.path.join(bindir, tool))
    name = uniq("m")
    before = pw("network", "ls").stdout
    r = subprocess.run(
        [sys.executable, "-m", "portwright", "network", "create", name],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": bindir},
    )
    assert r.returncode != 0 and "apt-get install nftables" in r.stderr and "Traceback" not in r.stderr
    assert pw("network", "ls").stdout == before


def test_detached_exit_is_recorded_and_logged(net: str) -> None:
    name = uniq("l")
    pw(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        net,
        "-e",
        "GREETING=hello",
        "--",
        "sh",
        "-c",
        "echo $GREETING from $(ip -o -4 addr show dev eth0 | wc -l) addr; exit 4",
    )
    deadline = time.time() + 15
    while inspect(name)["State"]["Status"] != "exited" and time.time() < deadline:
        time.sleep(0.1)
    info = inspect(name)
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 4
    assert pw("logs", name).stdout == "hello from 1 addr\n"
    assert "Exited (4)" in pw("ps", "-a").stdout and name not in pw("ps").stdout
    assert f"pw-{name}" not in netns_names()
    pw("rm", name)
    r = pw("logs", name, check=False)
    assert r.returncode == 3 and "no sandbox named" in r.stderr


def test_stop_grace_period_then_sigkill(net: str) -> None:
    name = uniq("g")
    pw(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        net,
        "--",
        "sh",
        "-c",
        "trap '' TERM; while :; do sleep 1; done",
    )
    pw("stop", "-t", "1", name)
    info = inspect(name)
    # 137 = 128 + SIGKILL, sent by the supervisor after the 1 s grace period. (Had the default 10 s
    # applied, stop would have given up first and killed the supervisor: no exit code at all.)
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 137
    assert f"pw-{name}" not in netns_names()
    pw("rm", name)


def test_rm_flag_and_cwd_with_a_shadowing_module(net: str, tmp_path: os.PathLike[str]) -> None:
    # A stray secrets.py in the user's directory must not break the detached supervisor, and CMD
    # still starts in the user's directory.
    with open(os.path.join(str(tmp_path), "secrets.py"), "w") as f:
        f.write("raise SystemExit('shadowed')\n")
    name = uniq("r")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "portwright",
            "run",
            "-d",
            "--rm",
            "--name",
            name,
            "--network",
            net,
            "--",
            "sh",
            "-c",
            "pwd > where; sleep 0.5",
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    assert r.returncode == 0, r.stderr
    deadline = time.time() + 15
    while name in pw("ps", "-a").stdout and time.time() < deadline:
        time.sleep(0.1)
    assert name not in pw("ps", "-a").stdout  # --rm: gone once CMD exited
    with open(os.path.join(str(tmp_path), "where")) as f:
        assert f.read().strip() == os.path.realpath(str(tmp_path))


def test_port_command_and_ps_ports_column(net: str) -> None:
    name = uniq("p")
    pw(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        net,
        "-p",
        "127.0.0.1::80",
        "-p",
        "0.0.0.0::53/udp",
        "--",
        "sleep",
        "60",
    )
    maps = inspect(name)["NetworkSettings"]["Mappings"]
    tcp_port = next(m["HostPort"] for m in maps if m["Proto"] == "tcp")
    udp_port = next(m["HostPort"] for m in maps if m["Proto"] == "udp")
    row = next(line for line in pw("ps").stdout.splitlines() if line.endswith(name))
    assert f"127.0.0.1:{tcp_port}->80/tcp" in row
    assert f"0.0.0.0:{udp_port}->53/udp" in row
    assert pw("port", name).stdout.splitlines() == [
        f"80/tcp -> 127.0.0.1:{tcp_port}",
        f"53/udp -> 0.0.0.0:{udp_port}",
    ]
    assert pw("port", name, "80/tcp").stdout == f"127.0.0.1:{tcp_port}\n"
    r = pw("port", name, "81", check=False)
    assert r.returncode == 3 and "no public port '81'" in r.stderr


def test_default_network_created_on_first_use() -> None:
    if "pw0" in pw("network", "ls").stdout:
        pytest.skip("pw0 already exists in this state directory")
    name = uniq("d")
    pw("run", "-d", "--name", name, "--", "sleep", "30")
    try:
        info = inspect(name)
        assert info["NetworkSettings"]["Network"] == "pw0"
        nets = {n["Name"]: n for n in json.loads(pw("network", "ls", "--format", "json").stdout)}
        assert "pw0" in nets and ipaddress.ip_address(
            info["NetworkSettings"]["IPAddress"]
        ) in ipaddress.ip_network(nets["pw0"]["IPAM"]["Config"][0]["Subnet"])
    finally:
        pw("rm", "-f", name)
        pw("network", "rm", "pw0", check=False)


def test_internal_network_has_no_egress(external: External) -> None:
    with temp_network("--internal", prefix="int") as net:
        name = uniq("i")
        pw("run", "-d", "--name", name, "--network", net, "--", "sleep", "60")
        srv = sh(
            "sh", "-c", "python3 -m http.server 8766 >/dev/null 2>&1 & echo $!", ns=external.ns
        ).stdout.strip()
        try:
            wait_tcp(external.ns, "127.0.0.1", 8766)
            r = sh("nc", "-z", "-w", "2", str(external.addr4), "8766", ns=f"pw-{name}", check=False)
            assert r.returncode != 0  # another machine is unreachable from an --internal network
            with temp_network(prefix="ext") as open_net:  # ... but reachable from a normal one
                other = uniq("o")
                pw("run", "-d", "--name", other, "--network", open_net, "--", "sleep", "60")
                wait_tcp(f"pw-{other}", str(external.addr4), 8766)
        finally:
            sh("kill", srv, check=False)
