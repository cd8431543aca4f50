"""portwright-cni driven as a runtime drives it: CNI_* environment plus stdin, chained after
Debian's real ``bridge`` and ``host-local`` plugins (containernetworking-plugins).

Each test gets its own bridge (``pwtc<hex>``), a subnet in 198.18.212.0/22 and throwaway
container namespaces; everything is deleted in the fixture's finally, also when a test fails.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from pwutil import docker_user_rules, free_port

import pwstate
from conftest import External, need, sh
from portwright.cni import protocol as p
from portwright.cni.holder import holder_pids
from portwright.firewall import nft, rules

CNI_DIR = "/usr/lib/cni"
PLUGIN = shutil.which("portwright-cni") or os.path.join(os.path.dirname(os.sys.executable), "portwright-cni")
_subnets = itertools.cycle(range(212, 216))


@dataclass
class Container:
    cid: str
    ns: str
    prev: dict[str, Any]
    ip: ipaddress.IPv4Address
    network: str
    server: subprocess.Popen[bytes] | None = None

    @property
    def netns(self) -> str:
        return f"/run/netns/{self.ns}"

    @property
    def owner(self) -> str:
        return p.owner_tag(self.cid, "eth0", self.network)


@dataclass
class Rig:
    """A CNI network: bridge + host-local, then portwright-cni, as a conflist would chain them."""

    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    data_dir: str
    containers: list[Container] = field(default_factory=list)

    def bridge_conf(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": self.name,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "isDefaultGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(self.subnet)}]],
                "dataDir": self.data_dir,
            },
        }

    def pw_conf(
        self, prev: dict[str, Any] | None, mappings: list[dict[str, Any]], version: str = "1.0.0", **opts: Any
    ) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": version,
            "name": self.name,
            "type": "portwright-cni",
            "capabilities": {"portMappings": True},
            "runtimeConfig": {"portMappings": mappings},
            **opts,
        }
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    @staticmethod
    def call(
        exe: str,
        command: str,
        conf: dict[str, Any] | str,
        cid: str = "",
        netns: str = "",
        ifname: str = "eth0",
    ) -> tuple[int, dict[str, Any] | None]:
        env = {
            **os.environ,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": CNI_DIR,
        }
        data = conf if isinstance(conf, str) else json.dumps(conf)
        r = subprocess.run([exe], input=data, env=env, capture_output=True, text=True, timeout=60)
        out = json.loads(r.stdout) if r.stdout.strip() else None
        return r.returncode, out

    def pw(
        self,
        command: str,
        conf: dict[str, Any] | str,
        c: Container | None = None,
        *,
        cid: str | None = None,
        netns: str | None = None,
    ) -> tuple[int, dict[str, Any] | None]:
        return self.call(
            PLUGIN,
            command,
            conf,
            cid if cid is not None else (c.cid if c else ""),
            netns if netns is not None else (c.netns if c else ""),
        )

    def new_container(self, serve_port: int = 80, cid: str | None = None) -> Container:
        cid = cid or secrets.token_hex(32)
        ns = f"pwt-cni-{secrets.token_hex(4)}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        rc, res = self.call(f"{CNI_DIR}/bridge", "ADD", self.bridge_conf(), cid, f"/run/netns/{ns}")
        assert rc == 0 and res is not None, res
        ip4 = next(ipaddress.ip_interface(i["address"]).ip for i in res["ips"] if "." in i["address"])
        c = Container(cid, ns, res, ip4, self.name)  # type: ignore[arg-type]
        self.containers.append(c)
        www = os.path.join(self.data_dir, f"www-{ns}")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write(f"hello {cid[:12]}\n")
        c.server = subprocess.Popen(
            ["ip", "netns", "exec", ns, "busybox", "httpd", "-f", "-p", str(serve_port), "-h", www]
        )
        return c

    def add(
        self, c: Container, mappings: list[dict[str, Any]], **opts: Any
    ) -> tuple[int, dict[str, Any] | None]:
        return self.pw("ADD", self.pw_conf(c.prev, mappings, **opts), c)

    def teardown(self) -> None:
        for c in self.containers:
            # With prevResult, as runtimes pass it: the last DEL on the bridge drops its DOCKER-USER rules.
            self.call(PLUGIN, "DEL", self.pw_conf(c.prev, []), c.cid, "")
            self.call(f"{CNI_DIR}/bridge", "DEL", self.bridge_conf(), c.cid, c.netns)
            if c.server is not None:
                c.server.kill()
                c.server.wait()
            sh("ip", "netns", "del", c.ns, check=False)
        left = docker_user_rules(self.bridge)
        sh("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        assert left == [], f"DOCKER-USER rules left for {self.bridge}: {left}"


@contextmanager
def new_rig() -> Iterator[Rig]:
    need("nft", "nftables")
    need("busybox", "busybox-static")
    need("curl", "curl")
    if not os.access(f"{CNI_DIR}/bridge", os.X_OK):
        pytest.skip("reference CNI plugins missing (apt-get install containernetworking-plugins)")
    tag = secrets.token_hex(3)
    r = Rig(
        name=f"pwt-cni-{tag}",
        bridge=f"pwtc{tag}",
        subnet=ipaddress.IPv4Network(f"198.18.{next(_subnets)}.0/24"),
        data_dir=tempfile.mkdtemp(prefix="pwt-cni-"),
    )
    try:
        yield r
    finally:
        r.teardown()


@pytest.fixture
def rig() -> Iterator[Rig]:
    with new_rig() as r:
        yield r


@pytest.fixture
def rig2(rig: Rig) -> Iterator[Rig]:
    """A second CNI network (own name, bridge and subnet) beside ``rig``."""
    with new_rig() as r:
        yield r


def curl(url: str, ns: str | None = None, timeout: float = 5) -> str:
    """GET url, retrying briefly while the server in the namespace starts."""
    deadline = time.monotonic() + timeout
    while True:
        r = sh("curl", "-sS", "-g", "--max-time", "2", url, ns=ns, check=False, timeout=10)
        if r.returncode == 0 or time.monotonic() > deadline:
            return r.stdout if r.returncode == 0 else f"curl failed ({r.returncode}): {r.stderr.strip()}"
        time.sleep(0.1)


def entries(owner: str) -> list[str]:
    """The owner's map elements and rules in the live table (empty when none is left)."""
    table = nft.table_json()
    tag = rules.owner_tag(owner)
    out = [e.mapping().docker_format() for e in rules.published(table) if e.owner == tag]
    out += [
        f"rule in {i['rule']['chain']}"
        for i in table.get("nftables", [])
        if "rule" in i and i["rule"].get("comment") == tag
    ]
    return out


def published_ports() -> set[int]:
    """Host ports of every element in the publish maps."""
    return {e.host_port for e in rules.published(nft.table_json())}


def cni_owners() -> set[str]:
    """CNI owner tags in the table (other engineers' sandboxes may come and go meanwhile)."""
    return {o for o in nft.owners() if o.startswith(p.TAG_PREFIX)}


def holders_of(owner: str) -> list[int]:
    return [pid for pid, _ in holder_pids(owner)]


def test_traffic_check_del(rig: Rig, external: External) -> None:
    c = rig.new_container()
    port = free_port()
    rc, res = rig.add(c, [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}])
    assert rc == 0, res
    assert res is not None and res["ips"] == c.prev["ips"] and res["cniVersion"] == "1.0.0"
    hello = f"hello {c.cid[:12]}"
    # From another machine, through PREROUTING and FORWARD.
    assert hello in curl(f"http://{external.host4}:{port}/", ns=external.ns)
    # From the host: loopback (route_localnet + masquerade) and one of its own addresses.
    assert hello in curl(f"http://127.0.0.1:{port}/")
    assert hello in curl(f"http://{external.host4}:{port}/")
    # Hairpin: the container reaches itself through the host's published port.
    assert hello in curl(f"http://{external.host4}:{port}/", ns=c.ns)
    # The reservation holder: named after portwright, carrying the container id, holding the port.
    pids = holders_of(c.owner)
    assert len(pids) == 1
    with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
        cmdline = f.read().replace(b"\0", b" ").decode()
    assert "portwright" in cmdline and c.cid in cmdline
    with socket.socket() as s, pytest.raises(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
    assert entries(c.owner)

    conf = rig.pw_conf(c.prev, [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}])
    assert rig.pw("CHECK", conf, c) == (0, None)
    # The holder puts a deleted element back within a moment (issue 13): paused, it cannot.
    os.kill(pids[0], signal.SIGSTOP)
    try:
        sh("nft", "delete", "element", "inet", "portwright", "pub4_any", "{", f"tcp . {port}", "}")
        rc, err = rig.pw("CHECK", conf, c)
    finally:
        os.kill(pids[0], signal.SIGCONT)
    assert rc == 1 and err is not None and err["code"] == p.E_CHECK_FAILED
    assert f"0.0.0.0:{port}->80/tcp" in err["msg"]
    deadline = time.monotonic() + 3
    while rig.pw("CHECK", conf, c) != (0, None) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rig.pw("CHECK", conf, c) == (0, None)  # put back by the holder

    for _ in range(2):  # DEL is idempotent
        assert rig.pw("DEL", conf, c) == (0, None)
        assert entries(c.owner) == [] and holders_of(c.owner) == []
    assert "curl failed" in curl(f"http://{external.host4}:{port}/", ns=external.ns, timeout=0)


def test_udp_and_ipv6_loopback(rig: Rig) -> None:
    c = rig.new_container(serve_port=8080)
    tport, uport = free_port(), free_port()
    rc, res = rig.add(
        c,
        [
            {"hostPort": tport, "containerPort": 8080, "hostIP": "::1"},
            {"hostPort": uport, "containerPort": 5353, "protocol": "udp", "hostIP": "127.0.0.1"},
        ],
    )
    assert rc == 0, res
    # [::1] cannot be DNATed by any kernel; the holder relays it to the container.
    assert f"hello {c.cid[:12]}" in curl(f"http://[::1]:{tport}/")
    # UDP through 127.0.0.1: a one-shot listener in the container echoes what it receives.
    srv = subprocess.Popen(["ip", "netns", "exec", c.ns, "socat", "-T2", "UDP-RECVFROM:5353", "EXEC:cat"])
    try:
        time.sleep(0.3)
        r = sh("socat", "-T2", "-", f"UDP:127.0.0.1:{uport}", input="ping-udp\n", check=False, timeout=10)
        assert "ping-udp" in r.stdout
    finally:
        srv.kill()
        srv.wait()
    assert rig.pw("DEL", rig.pw_conf(None, []), c, netns="") == (0, None)
    assert entries(c.owner) == [] and holders_of(c.owner) == []


def test_del_without_prev_result_netns_gone_state_wiped(rig: Rig, tmp_path: Any) -> None:
    c = rig.new_container()
    port = free_port()
    assert rig.add(c, [{"hostPort": port, "containerPort": 80}])[0] == 0
    assert entries(c.owner)
    sh("ip", "netns", "del", c.ns)
    wiped = pwstate.register(str(tmp_path / "wiped"))
    os.environ["PORTWRIGHT_STATE_DIR"], old = wiped, os.environ["PORTWRIGHT_STATE_DIR"]
    try:
        rc, out = rig.pw("DEL", rig.pw_conf(None, []), c)  # netns path no longer exists
        assert (rc, out) == (0, None)
        assert rig.pw("DEL", rig.pw_conf(None, []), c, netns="") == (0, None)
    finally:
        os.environ["PORTWRIGHT_STATE_DIR"] = old
        pwstate.remove(wiped)
    assert entries(c.owner) == [] and holders_of(c.owner) == []


def test_gc_drops_vanished_attachment(rig: Rig) -> None:
    alive, gone = rig.new_container(), rig.new_container()
    pa, pg = free_port(), free_port()
    assert rig.add(alive, [{"hostPort": pa, "containerPort": 80}], version="1.1.0")[0] == 0
    assert rig.add(gone, [{"hostPort": pg, "containerPort": 80}], version="1.1.0")[0] == 0
    gc = rig.pw_conf(
        None,
        [],
        version="1.1.0",
        **{"cni.dev/valid-attachments": [{"containerID": alive.cid, "ifname": "eth0"}]},
    )
    assert rig.pw("GC", gc) == (0, None)
    assert entries(gone.owner) == [] and holders_of(gone.owner) == []
    assert entries(alive.owner) and len(holders_of(alive.owner)) == 1
    assert f"hello {alive.cid[:12]}" in curl(f"http://127.0.0.1:{pa}/")
    assert rig.pw("STATUS", rig.pw_conf(None, [], version="1.1.0")) == (0, None)


def test_gc_of_one_network_leaves_other_networks(rig: Rig, rig2: Rig) -> None:
    # Podman's setting: no holder, so only the tag in the kernel says whose network it is.
    c1, c2 = rig.new_container(), rig2.new_container()
    p1, p2 = free_port(), free_port()
    assert (
        rig.add(c1, [{"hostPort": p1, "containerPort": 80}], version="1.1.0", reserveHostPort=False)[0] == 0
    )
    assert (
        rig2.add(c2, [{"hostPort": p2, "containerPort": 80}], version="1.1.0", reserveHostPort=False)[0] == 0
    )
    assert {p1, p2} <= published_ports()
    gc = rig.pw_conf(None, [], version="1.1.0", **{"cni.dev/valid-attachments": []})
    assert rig.pw("GC", gc) == (0, None)
    ports = published_ports()
    assert p1 not in ports and p2 in ports
    assert entries(c1.owner) == [] and entries(c2.owner)
    assert f"hello {c2.cid[:12]}" in curl(f"http://127.0.0.1:{p2}/")


def test_gc_with_long_container_ids(rig: Rig) -> None:
    stale, valid = (
        rig.new_container(cid=secrets.token_hex(100)),
        rig.new_container(cid=secrets.token_hex(100)),
    )
    ps, pv = free_port(), free_port()
    for c, port in ((stale, ps), (valid, pv)):
        assert (
            rig.add(c, [{"hostPort": port, "containerPort": 80}], version="1.1.0", reserveHostPort=False)[0]
            == 0
        )
    assert {ps, pv} <= published_ports()
    gc = rig.pw_conf(
        None,
        [],
        version="1.1.0",
        **{"cni.dev/valid-attachments": [{"containerID": valid.cid, "ifname": "eth0"}]},
    )
    assert rig.pw("GC", gc) == (0, None)
    ports = published_ports()
    assert ps not in ports and pv in ports
    # The kernel holds the tag whole (not hashed), so GC could read it back.
    assert entries(stale.owner) == [] and entries(valid.owner) and valid.owner in cni_owners()
    assert f"hello {valid.cid[:12]}" in curl(f"http://127.0.0.1:{pv}/")
    assert rig.pw("DEL", rig.pw_conf(None, []), valid) == (0, None)
    assert entries(valid.owner) == [] and pv not in published_ports()


def test_port_conflicts_leave_nothing(rig: Rig) -> None:
    a, b = rig.new_container(), rig.new_container()
    port = free_port()
    assert rig.add(a, [{"hostPort": port, "containerPort": 80}])[0] == 0
    before = cni_owners()
    # Another container's mapping (found by its tag in the live table).
    rc, err = rig.add(
        b, [{"hostPort": port, "containerPort": 80, "hostIP": "127.0.0.1"}], reserveHostPort=False
    )
    assert rc == 1 and err is not None and err["code"] == p.E_PORT_IN_USE
    assert f"127.0.0.1:{port}/tcp" in err["msg"] and a.cid[:12] in err["msg"]
    assert cni_owners() == before and holders_of(b.owner) == []
    # A host program listening on the port.
    hport = free_port()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", hport))
        s.listen(1)
        for reserve in (True, False):
            rc, err = rig.add(b, [{"hostPort": hport, "containerPort": 80}], reserveHostPort=reserve)
            assert rc == 1 and err is not None and err["code"] == p.E_PORT_IN_USE, err
            assert f"{hport}" in err["msg"] and f"pid {os.getpid()}" in err["msg"]
            assert cni_owners() == before and holders_of(b.owner) == []


def test_errors_are_spec_json_and_leave_nothing(rig: Rig) -> None:
    c = rig.new_container()
    port = free_port()
    good = rig.pw_conf(c.prev, [{"hostPort": port, "containerPort": 80}])
    before = cni_owners()
    cases: list[tuple[str, dict[str, Any] | str, str, int]] = [
        ("ADD", "{broken", c.netns, p.E_DECODE),
        (
            "ADD",
            {**good, "runtimeConfig": {"portMappings": [{"hostPort": "x", "containerPort": 80}]}},
            c.netns,
            p.E_INVALID_CONFIG,
        ),
        ("ADD", {k: v for k, v in good.items() if k != "prevResult"}, c.netns, p.E_INVALID_CONFIG),
        ("FROB", good, c.netns, p.E_INVALID_ENV),
        ("ADD", good, "/run/netns/pwt-does-not-exist", p.E_UNKNOWN_CONTAINER),
        ("ADD", {**good, "cniVersion": "0.3.1"}, c.netns, p.E_INCOMPATIBLE_VERSION),
    ]
    for command, conf, netns, code in cases:
        rc, err = rig.pw(command, conf, c, netns=netns)
        assert rc == 1 and err is not None, (command, conf)
        assert err["code"] == code and set(err) <= {"cniVersion", "code", "msg", "details"}, err
        assert err["msg"] and "\n" not in err["msg"]
        assert cni_owners() == before and holders_of(c.owner) == []
    rc, out = rig.pw("VERSION", {"cniVersion": "1.1.0"})
    assert rc == 0 and out == {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
