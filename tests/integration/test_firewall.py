"""The nftables firewall layer against real packets, in throwaway namespaces only.

The "host" is itself a fresh network namespace (``pwt-fw-*``), so these tests never touch the
real host's ``inet portwright`` table while other suites run. Inside it:

    ext (another machine) --veth-- HOST --pwtbr0-- b1 (sandbox running the test server)
                                        --pwtbr1-- b2 (a sandbox on another network)

Every path a user tries goes through ``firewall.nft`` with curl (TCP) and a small UDP client,
and the server answers with the client address it saw, so source preservation and masquerade
are checked on the wire. The module runs twice: on a plain host, and with dockerd's iptables
layout (filter FORWARD policy DROP and a DOCKER-USER chain, made with iptables-nft as dockerd
does) after ``docker_user_sync``.
"""

from __future__ import annotations

import ipaddress
import json
import random
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import need, sh
from portwright.errors import KernelError, PortInUse, PortwrightError
from portwright.firewall import dockeruser, nft, rules
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend
from portwright.model import Mapping, Network

A = ipaddress.ip_address

# Addresses: all from 198.18.0.0/15 and 2001:2::/48, and all inside our own namespaces.
HOST_EXT4, EXT4 = "198.18.212.1", "198.18.212.2"
HOST_EXT6, EXT6 = "2001:2:d4::1", "2001:2:d4::2"
GW1_4, B1_4, GW1_6, B1_6 = "198.18.210.1", "198.18.210.2", "2001:2:d2::1", "2001:2:d2::2"
GW2_4, B2_4, GW2_6, B2_6 = "198.18.211.1", "198.18.211.2", "2001:2:d3::1", "2001:2:d3::2"
SERVER_PORTS = (80, 81, 53)  # b1 serves HTTP on each, and UDP on each

SERVER = r"""
import socket, sys, threading, time

def norm(a):
    return a[7:] if a.startswith("::ffff:") else a

def http(addr, port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((addr, port))
    s.listen(64)
    while True:
        c, a = s.accept()
        threading.Thread(target=serve, args=(c, a[0], port), daemon=True).start()

def serve(c, peer, port):
    with c:
        c.settimeout(5)
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = c.recv(4096)
            if not d:
                break
            buf += d
        body = ("%s %s %d\n" % (norm(peer), TAG, port)).encode()
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

def udp(addr, port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((addr, port))
    while True:
        data, a = s.recvfrom(2048)
        s.sendto(("%s %s %d\n" % (norm(a[0]), TAG, port)).encode(), a)

TAG, addr = sys.argv[1], sys.argv[2]
for p in sys.argv[3:]:
    for fn in (http, udp):
        threading.Thread(target=fn, args=(addr, int(p)), daemon=True).start()
time.sleep(0.3)
print("ready", flush=True)
while True:
    time.sleep(3600)
"""

UDP_CLIENT = r"""
import socket, sys
addr, port, sport, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if sport:
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
s.settimeout(timeout)
s.sendto(b"ping", (addr, port))
try:
    print(s.recv(2048).decode().strip())
except (socket.timeout, ConnectionRefusedError):
    print("TIMEOUT")
"""


@dataclass
class Topo:
    host: str
    b1: str
    b2: str
    ext: str
    net1: Network
    net2: Network
    scripts: Path
    docker_layout: bool
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def serve(self, ns: str, tag: str, addr: str, *ports: int) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                str(self.scripts / "server.py"),
                tag,
                addr,
                *map(str, ports),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return p


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def curl(ns: str, host: str, port: int, timeout: float = 3) -> str | None:
    """The server's answer ("<client address seen> <server tag> <backend port>") or None."""
    p = sh(
        "curl",
        "-sS",
        "-g",
        "--max-time",
        str(timeout),
        _url(host, port),
        ns=ns,
        check=False,
        timeout=timeout + 10,
    )
    return p.stdout.strip() if p.returncode == 0 else None


def udp(topo: Topo, ns: str, host: str, port: int, sport: int = 0, timeout: float = 2) -> str | None:
    p = sh(
        sys.executable,
        str(topo.scripts / "udp_client.py"),
        host,
        str(port),
        str(sport),
        str(timeout),
        ns=ns,
        timeout=timeout + 10,
    )
    out = p.stdout.strip()
    return None if out == "TIMEOUT" else out


def m(proto: str, host: str, hport: int, cont: str, cport: int) -> Mapping:
    return Mapping(
        proto=proto,
        host_ip=A(host),
        host_port=hport,
        container_ip=A(cont),  # type: ignore[arg-type]
        container_port=cport,
    )


def both(proto: str, hport: int, cport: int) -> list[Mapping]:
    """A dual-stack ``-p hport:cport/proto`` to b1, as the engine hands it over."""
    return [m(proto, "0.0.0.0", hport, B1_4, cport), m(proto, "::", hport, B1_6, cport)]


def _link_pair(host: str, name: str, peer_ns: str) -> None:
    sh("ip", "-n", host, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", peer_ns)
    sh("ip", "-n", peer_ns, "link", "set", "lo", "up")


def _addr(ns: str, dev: str, a4: str, a6: str, plen4: int = 24) -> None:
    sh("ip", "-n", ns, "addr", "add", f"{a4}/{plen4}", "dev", dev)
    sh("ip", "-n", ns, "-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad")
    sh("ip", "-n", ns, "link", "set", dev, "up")


def _defaults(ns: str, gw4: str, gw6: str) -> None:
    sh("ip", "-n", ns, "route", "add", "default", "via", gw4)
    sh("ip", "-n", ns, "-6", "route", "add", "default", "via", gw6)


def docker_layout(ns: str) -> None:
    """dockerd's filter layout as iptables-nft leaves it: FORWARD DROP, FORWARD -> DOCKER-USER."""
    for tool in ("iptables", "ip6tables"):
        sh(tool, "-P", "FORWARD", "DROP", ns=ns)
        sh(tool, "-N", "DOCKER-USER", ns=ns)
        sh(tool, "-A", "DOCKER-USER", "-j", "RETURN", ns=ns)
        sh(tool, "-A", "FORWARD", "-j", "DOCKER-USER", ns=ns)


@pytest.fixture(scope="module", params=["plain", "dockerd-layout"])
def topo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topo]:
    need("nft", "nftables")
    need("curl", "curl")
    need("conntrack", "conntrack")
    tag = secrets.token_hex(3)
    host, b1, b2, ext = (f"pwt-fw{r}-{tag}" for r in ("h", "b1", "b2", "x"))
    scripts = tmp_path_factory.mktemp("fw")
    (scripts / "server.py").write_text(SERVER)
    (scripts / "udp_client.py").write_text(UDP_CLIENT)
    net1 = Network(
        name="fw-one",
        bridge="pwtbr0",
        subnet4=ipaddress.IPv4Network("198.18.210.0/24"),
        gateway4=ipaddress.IPv4Address(GW1_4),
        subnet6=ipaddress.IPv6Network("2001:2:d2::/64"),
        gateway6=ipaddress.IPv6Address(GW1_6),
    )
    net2 = Network(
        name="fw-two",
        bridge="pwtbr1",
        subnet4=ipaddress.IPv4Network("198.18.211.0/24"),
        gateway4=ipaddress.IPv4Address(GW2_4),
        subnet6=ipaddress.IPv6Network("2001:2:d3::/64"),
        gateway6=ipaddress.IPv6Address(GW2_6),
    )
    t = Topo(
        host=host,
        b1=b1,
        b2=b2,
        ext=ext,
        net1=net1,
        net2=net2,
        scripts=scripts,
        docker_layout=request.param == "dockerd-layout",
    )
    try:
        for ns in (host, b1, b2, ext):
            sh("ip", "netns", "add", ns)
        sh("ip", "-n", host, "link", "set", "lo", "up")
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", ns=host)
        for net, sb, b4, b6, veth in ((net1, b1, B1_4, B1_6, "pwtv0"), (net2, b2, B2_4, B2_6, "pwtv1")):
            sh("ip", "-n", host, "link", "add", net.bridge, "type", "bridge")
            _addr(host, net.bridge, str(net.gateway4), str(net.gateway6))
            # what the engine does for 127.0.0.1:P -> sandbox (a sysctl per bridge)
            sh("sysctl", "-qw", f"net.ipv4.conf.{net.bridge}.route_localnet=1", ns=host)
            _link_pair(host, veth, sb)
            sh("ip", "-n", host, "link", "set", veth, "master", net.bridge, "up")
            # hairpin_mode on the port, as the engine (and Docker) sets it: with br_netfilter
            # loaded, a hairpin DNAT turns back out of the port the frame came in on
            sh("ip", "-n", host, "link", "set", veth, "type", "bridge_slave", "hairpin", "on")
            _addr(sb, "eth0", b4, b6)
            _defaults(sb, str(net.gateway4), str(net.gateway6))
        _link_pair(host, "pwtx0", ext)
        _addr(host, "pwtx0", HOST_EXT4, HOST_EXT6)
        _addr(ext, "eth0", EXT4, EXT6)
        _defaults(ext, HOST_EXT4, HOST_EXT6)
        if t.docker_layout:
            docker_layout(host)
        nft.ensure_base(netns=host)
        nft.add_network(net1, netns=host)
        nft.add_network(net2, netns=host)
        if t.docker_layout:
            nft.docker_user_sync([net1.bridge, net2.bridge], netns=host)
        t.serve(b1, "b1", "::", *SERVER_PORTS)
        yield t
    finally:
        for p in t.procs:
            p.kill()
            p.wait()
        for ns in (ext, b2, b1, host):  # the host namespace takes its table, bridges and iptables along
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def owner(topo: Topo) -> Iterator[str]:
    """A fresh owner tag; whatever it published is removed even when the test fails."""
    tag = "pw:" + secrets.token_hex(6)
    try:
        yield tag
    finally:
        nft.unpublish(tag, netns=topo.host)


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------


def test_external_client_reaches_any_host_address_and_keeps_its_source(topo: Topo, owner: str) -> None:
    nft.publish(owner, both("tcp", 8080, 80) + both("udp", 5300, 53), netns=topo.host)
    for host_addr in (HOST_EXT4, GW1_4, GW2_4):  # every local address of the host
        assert curl(topo.ext, host_addr, 8080) == f"{EXT4} b1 80"
        assert udp(topo, topo.ext, host_addr, 5300) == f"{EXT4} b1 53"
    for host_addr in (HOST_EXT6, GW1_6):
        assert curl(topo.ext, host_addr, 8080) == f"{EXT6} b1 80"
        assert udp(topo, topo.ext, host_addr, 5300) == f"{EXT6} b1 53"


def test_specific_host_address_only_and_wins_over_wildcard(topo: Topo, owner: str) -> None:
    nft.publish(
        owner,
        [
            m("tcp", HOST_EXT4, 8090, B1_4, 81),
            m("tcp", HOST_EXT6, 8090, B1_6, 81),
            m("udp", HOST_EXT4, 5390, B1_4, 81),
            # the same port on every other address goes to port 80
            m("tcp", "0.0.0.0", 8090, B1_4, 80),
        ],
        netns=topo.host,
    )
    assert curl(topo.ext, HOST_EXT4, 8090) == f"{EXT4} b1 81"
    assert curl(topo.ext, HOST_EXT6, 8090) == f"{EXT6} b1 81"
    assert udp(topo, topo.ext, HOST_EXT4, 5390) == f"{EXT4} b1 81"
    assert curl(topo.ext, GW1_4, 8090) == f"{EXT4} b1 80"
    assert udp(topo, topo.ext, GW1_4, 5390, timeout=1) is None  # UDP was bound to HOST_EXT4 only
    assert curl(topo.ext, GW1_6, 8090, timeout=2) is None  # v6 was bound to HOST_EXT6 only


def test_host_reaches_loopback_and_its_own_addresses(topo: Topo, owner: str) -> None:
    nft.publish(owner, both("tcp", 8180, 80) + both("udp", 5480, 53), netns=topo.host)
    # 127.0.0.1 works through route_localnet; host-local sources are masqueraded to the gateway
    assert curl(topo.host, "127.0.0.1", 8180) == f"{GW1_4} b1 80"
    assert udp(topo, topo.host, "127.0.0.1", 5480) == f"{GW1_4} b1 53"
    assert curl(topo.host, HOST_EXT4, 8180) == f"{GW1_4} b1 80"
    assert udp(topo, topo.host, HOST_EXT4, 5480) == f"{GW1_4} b1 53"
    assert curl(topo.host, HOST_EXT6, 8180) == f"{GW1_6} b1 80"
    assert udp(topo, topo.host, HOST_EXT6, 5480) == f"{GW1_6} b1 53"


def test_ipv6_loopback_is_left_to_a_proxy_listener(topo: Topo, owner: str) -> None:
    # [::1] cannot be DNATed (a ::1 source never leaves lo); the engine serves it with a
    # proxy listener, so the table must let [::1]:P reach a local socket untouched.
    nft.publish(owner, both("tcp", 8181, 80), netns=topo.host)
    topo.serve(topo.host, "host-proxy", "::1", 8181)
    assert curl(topo.host, "::1", 8181) == "::1 host-proxy 8181"
    assert curl(topo.host, HOST_EXT6, 8181) == f"{GW1_6} b1 80"  # while the v6 wildcard still DNATs


def test_hairpin_and_other_network_through_published_port(topo: Topo, owner: str) -> None:
    nft.publish(owner, both("tcp", 8280, 80) + both("udp", 5580, 53), netns=topo.host)
    # hairpin: b1 to its own published port through the host; masqueraded to the gateway
    assert curl(topo.b1, HOST_EXT4, 8280) == f"{GW1_4} b1 80"
    assert udp(topo, topo.b1, HOST_EXT4, 5580) == f"{GW1_4} b1 53"
    assert curl(topo.b1, HOST_EXT6, 8280) == f"{GW1_6} b1 80"
    # another network's sandbox: allowed through the published port, source kept
    assert curl(topo.b2, HOST_EXT4, 8280) == f"{B2_4} b1 80"
    assert curl(topo.b2, GW2_4, 8280) == f"{B2_4} b1 80"
    assert udp(topo, topo.b2, HOST_EXT4, 5580) == f"{B2_4} b1 53"
    assert curl(topo.b2, HOST_EXT6, 8280) == f"{B2_6} b1 80"


def test_only_published_ports_reach_sandboxes(topo: Topo, owner: str) -> None:
    nft.publish(owner, both("tcp", 8380, 80), netns=topo.host)
    assert curl(topo.ext, HOST_EXT4, 8380) == f"{EXT4} b1 80"  # control: the path works
    # isolation: b2 cannot reach b1's address directly, nor can another machine
    assert curl(topo.b2, B1_4, 80, timeout=1) is None
    assert curl(topo.b2, B1_6, 80, timeout=1) is None
    assert curl(topo.ext, B1_4, 80, timeout=1) is None
    assert curl(topo.ext, B1_6, 80, timeout=1) is None
    # sandboxes still reach out (egress, masqueraded to the host's address)
    topo.serve(topo.ext, "ext", "::", 9080)
    assert curl(topo.b1, EXT4, 9080) == f"{HOST_EXT4} ext 9080"
    assert curl(topo.b1, EXT6, 9080) == f"{HOST_EXT6} ext 9080"


def test_loopback_only_mapping_is_not_reachable_from_outside(topo: Topo, owner: str) -> None:
    """Docker #45610/#41872: a neighbour routing 127.0.0.1 to the host must not get through."""
    nft.publish(
        owner, [m("tcp", "127.0.0.1", 8470, B1_4, 80), m("udp", "127.0.0.1", 5670, B1_4, 53)], netns=topo.host
    )
    assert curl(topo.host, "127.0.0.1", 8470) == f"{GW1_4} b1 80"  # the host itself: yes
    nb = f"pwt-fwn-{secrets.token_hex(3)}"
    try:
        # A hostile neighbour: lo left down (so 127/8 is not local) and 127.0.0.1 routed to us.
        sh("ip", "netns", "add", nb)
        sh("ip", "-n", topo.host, "link", "add", "pwtn0", "type", "veth", "peer", "name", "eth0", "netns", nb)
        sh("ip", "-n", topo.host, "addr", "add", "198.18.214.1/24", "dev", "pwtn0")
        sh("ip", "-n", topo.host, "link", "set", "pwtn0", "up")
        sh("ip", "-n", nb, "addr", "add", "198.18.214.2/24", "dev", "eth0")
        sh("ip", "-n", nb, "link", "set", "eth0", "up")
        sh(
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.route_localnet=1",
            "net.ipv4.conf.eth0.route_localnet=1",
            ns=nb,
        )
        sh("ip", "-n", nb, "route", "add", "127.0.0.1/32", "via", "198.18.214.1", "dev", "eth0")
        sh("ip", "-n", nb, "route", "add", "default", "via", "198.18.214.1")
        assert curl(nb, "198.18.214.1", 8470, timeout=1) is None  # not bound there either
        assert curl(nb, "127.0.0.1", 8470, timeout=2) is None
        assert udp(topo, nb, "127.0.0.1", 5670, timeout=1) is None
        # Proof that the neighbour's packets do arrive and that the guard is what stops them:
        # without the guard chain's rules, the DNAT lets them through as in Docker.
        sh("nft", "flush", "chain", rules.FAMILY, rules.TABLE, rules.CHAIN_GUARD, ns=topo.host)
        try:
            assert curl(nb, "127.0.0.1", 8470, timeout=2) == "198.18.214.2 b1 80"
        finally:
            nft.ensure_base(netns=topo.host)
        assert curl(nb, "127.0.0.1", 8470, timeout=2) is None
    finally:
        sh("ip", "netns", "del", nb, check=False)


def test_udp_client_that_sent_early_is_unstuck_by_conntrack_flush(topo: Topo, owner: str) -> None:
    """Docker #8795: a UDP flow seen before the rule keeps its un-NATed conntrack entry."""
    sport = 40000 + secrets.randbelow(2000)
    assert udp(topo, topo.ext, HOST_EXT4, 5770, sport=sport, timeout=1) is None  # nothing there yet
    nft.publish(owner, [m("udp", "0.0.0.0", 5770, B1_4, 53)], netns=topo.host, flush_udp=False)
    # the early client is stuck on its old entry, although the rule now exists...
    assert udp(topo, topo.ext, HOST_EXT4, 5770, sport=sport, timeout=1) is None
    assert udp(topo, topo.ext, HOST_EXT4, 5770, timeout=2) == f"{EXT4} b1 53"  # a new flow is fine
    nft.flush_conntrack("udp", 5770, netns=topo.host)
    # ...until its entry is flushed
    assert udp(topo, topo.ext, HOST_EXT4, 5770, sport=sport) == f"{EXT4} b1 53"
    nft.flush_conntrack("udp", 5770, netns=topo.host)  # nothing stale left is not an error
    nft.flush_conntrack("udp", 5771, netns=topo.host)

    # publish() flushes by default, for many ports at once too
    sport2 = sport + 1
    assert udp(topo, topo.ext, HOST_EXT4, 5780, sport=sport2, timeout=1) is None
    nft.publish(owner, [m("udp", "0.0.0.0", p, B1_4, 53) for p in (5778, 5779, 5780)], netns=topo.host)
    assert udp(topo, topo.ext, HOST_EXT4, 5780, sport=sport2) == f"{EXT4} b1 53"


# ---------------------------------------------------------------------------------------------
# Ownership, conflicts, teardown
# ---------------------------------------------------------------------------------------------


def test_owners_are_independent_and_ports_are_refused_to_others(topo: Topo) -> None:
    a, b, c = ("pw:" + secrets.token_hex(6) for _ in range(3))
    try:
        nft.publish(a, both("tcp", 8580, 80), netns=topo.host)
        nft.publish(b, both("tcp", 8581, 81) + [m("udp", "0.0.0.0", 8581, B1_4, 81)], netns=topo.host)
        assert {a, b} <= nft.owners(netns=topo.host)
        before = nft.table_json(netns=topo.host)
        # a second sandbox asking for b's port (any address form) is refused, naming b, and
        # nothing changes
        for asked in (
            [m("tcp", "0.0.0.0", 8581, B2_4, 80)],
            [m("tcp", HOST_EXT4, 8581, B2_4, 80)],
            [m("tcp", "::", 8581, B2_6, 80)],
        ):
            with pytest.raises(PortInUse, match=b):
                nft.publish(c, asked, netns=topo.host)
        assert nft.table_json(netns=topo.host) == before
        nft.unpublish(a, netns=topo.host)
        nft.unpublish(a, netns=topo.host)  # idempotent
        assert curl(topo.ext, HOST_EXT4, 8580, timeout=1) is None
        assert curl(topo.ext, HOST_EXT4, 8581) == f"{EXT4} b1 81"
        assert curl(topo.ext, HOST_EXT6, 8581) == f"{EXT6} b1 81"
        left = {p.owner for p in rules.published(nft.table_json(netns=topo.host))}
        assert a not in left and b in left
        assert a not in nft.owners(netns=topo.host)
    finally:
        for o in (a, b, c):
            nft.unpublish(o, netns=topo.host)
    assert not {a, b, c} & nft.owners(netns=topo.host)


def test_failed_transaction_changes_nothing(topo: Topo, owner: str) -> None:
    nft.publish(owner, [m("tcp", "0.0.0.0", 8680, B1_4, 80)], netns=topo.host)
    before = nft.table_json(netns=topo.host)
    # same key, other target, straight through run(): the kernel refuses the element (EEXIST),
    # and the batch's other element must not appear either
    cmds = rules.publish_commands(
        owner, [m("tcp", "0.0.0.0", 8681, B1_4, 80), m("tcp", "0.0.0.0", 8680, B1_4, 81)]
    )
    with pytest.raises(KernelError, match="nft"):
        nft.run(cmds, netns=topo.host)
    assert nft.table_json(netns=topo.host) == before


def test_many_ports_first_and_last_work(topo: Topo, owner: str) -> None:
    ports = range(30000, 32000)
    nft.publish(owner, [m("tcp", "0.0.0.0", p, B1_4, 80) for p in ports], netns=topo.host)
    chains_rules = sum(1 for i in nft.table_json(netns=topo.host)["nftables"] if "rule" in i)
    assert curl(topo.ext, HOST_EXT4, ports[0]) == f"{EXT4} b1 80"
    assert curl(topo.ext, HOST_EXT4, ports[-1]) == f"{EXT4} b1 80"
    nft.unpublish(owner, netns=topo.host)
    after = nft.table_json(netns=topo.host)
    assert sum(1 for i in after["nftables"] if "rule" in i) == chains_rules  # no rule per port
    assert owner not in rules.owners(after)


# ---------------------------------------------------------------------------------------------
# The in-memory fake (firewall.fake) against the kernel
# ---------------------------------------------------------------------------------------------


def _view(table: dict[str, Any]) -> dict[str, Any]:
    """Everything a reader can tell from a listing: the readers' answers, every object with its
    type, every element, and each chain's rules in order (handles aside)."""
    objs: dict[str, Any] = {}
    for item in table.get("nftables", []):
        for kind, body in item.items():
            if kind in ("table", "chain", "set", "map"):
                attrs = {k: v for k, v in body.items() if k not in ("handle", "elem")}
                elems = sorted(json.dumps(e, sort_keys=True) for e in body.get("elem", []))
                objs[f"{kind} {body['name']}"] = (attrs, elems)
    chains: dict[str, list[tuple[str | None, Any]]] = {}
    for r in (i["rule"] for i in table.get("nftables", []) if "rule" in i):
        chains.setdefault(r["chain"], []).append((r.get("comment"), r["expr"]))
    return {
        "published": sorted((str(p.owner), p.mapping().docker_format()) for p in rules.published(table)),
        "owners": rules.owners(table),
        "networks": rules.networks(table),
        "bridges": rules.bridges(table),
        "objects": objs,
        "rules": chains,
    }


def _outcome(fn: Callable[[Firewall], Any], fw: Firewall) -> str:
    try:
        fn(fw)
    except KernelError:
        return "KernelError"  # the detail is nft's stderr on one side, the fake's text on the other
    except PortwrightError as e:
        return f"{type(e).__name__}: {e}"
    return "ok"


def _cmp_ops(rng: random.Random) -> list[tuple[str, Callable[[Firewall], Any]]]:
    """A fixed opening (every operation and refusal once), then random operations."""
    nets = [
        Network(
            name=f"cmp{i}",
            bridge=f"pwtcmp{i}",
            subnet4=ipaddress.IPv4Network(f"198.18.22{i}.0/24"),
            gateway4=ipaddress.IPv4Address(f"198.18.22{i}.1"),
            subnet6=ipaddress.IPv6Network(f"2001:2:e{i}::/64") if i == 0 else None,
            gateway6=ipaddress.IPv6Address(f"2001:2:e{i}::1") if i == 0 else None,
            internal=i == 1,
        )
        for i in range(2)
    ]
    owners = [f"pw:{i:012x}" for i in range(3)] + ["cni:" + "c" * 64 + ":eth0:cmpnet"]
    hosts = [
        ("0.0.0.0", "198.18.220.2"),
        ("::", "2001:2:e0::2"),
        ("127.0.0.1", "198.18.220.3"),
        ("198.18.220.1", "198.18.221.2"),
        ("2001:2:e0::1", "2001:2:e0::3"),
        ("::1", "2001:2:e0::2"),
    ]

    def some_mappings() -> list[Mapping]:
        out: dict[tuple[str, str, int], Mapping] = {}
        for _ in range(rng.randint(1, 4)):
            host, cont = rng.choice(hosts)
            proto, port = rng.choice(["tcp", "udp"]), rng.randint(24000, 24003)
            out[(proto, host, port)] = m(proto, host, port, cont, rng.randint(1, 3))
        return list(out.values())

    def publish(owner: str, maps: list[Mapping]) -> tuple[str, Callable[[Firewall], Any]]:
        cni = owner.startswith("cni:")
        extra = rules.bridge_masquerade_commands(owner, "cni0", maps, [nets[0].subnet4]) if cni else []
        return (
            f"publish {owner} {[x.docker_format() for x in maps]}",
            lambda fw: fw.publish(owner, maps, flush_udp=False, extra_rules=extra),
        )

    ops: list[tuple[str, Callable[[Firewall], Any]]] = [
        ("ensure_base", lambda fw: fw.ensure_base()),
        ("add_network 0", lambda fw: fw.add_network(nets[0])),
        ("add_network 1", lambda fw: fw.add_network(nets[1])),
        publish(
            owners[0],
            [m("tcp", "0.0.0.0", 24000, "198.18.220.2", 80), m("udp", "::", 24000, "2001:2:e0::2", 53)],
        ),
        publish(owners[1], [m("tcp", "198.18.220.1", 24000, "198.18.220.3", 80)]),  # under owner 0's wildcard
        publish(owners[3], [m("tcp", "127.0.0.1", 24001, "198.18.220.3", 80)]),
        ("remove_table", lambda fw: fw.remove_table()),
        (
            "delete a missing element",
            lambda fw: fw.backend.apply(
                rules.unpublish_commands(owners[0], fw.table())
                + rules.unpublish_commands(owners[0], fw.table())
            ),
        ),
        ("add_network 0 again", lambda fw: fw.add_network(nets[0])),
        ("unpublish 0", lambda fw: fw.unpublish(owners[0])),
        ("unpublish 0 again", lambda fw: fw.unpublish(owners[0])),
    ]
    for _ in range(40):
        pick = rng.random()
        if pick < 0.5:
            ops.append(publish(rng.choice(owners), some_mappings()))
        elif pick < 0.75:
            owner = rng.choice(owners)
            ops.append((f"unpublish {owner}", lambda fw, o=owner: fw.unpublish(o)))
        elif pick < 0.85:
            net = rng.choice(nets)
            ops.append((f"add_network {net.name}", lambda fw, n=net: fw.add_network(n)))
        elif pick < 0.95:
            net = rng.choice(nets)
            ops.append((f"remove_network {net.name}", lambda fw, n=net: fw.remove_network(n.name)))
        else:
            ops.append(("remove_table", lambda fw: fw.remove_table()))
    return ops


def test_fake_matches_the_kernel() -> None:
    """The same operations on nftables (a throwaway namespace) and on firewall.fake leave tables
    that read the same after every step, and fail in the same way: the fake is what the
    rootless tests of the engine, the publishers and the CNI plugin run against."""
    need("nft", "nftables")
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    ns = f"pwt-fwcmp-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", ns)
    try:
        kernel, fake = Firewall(nft.NftBackend(netns=ns)), Firewall(FakeBackend())
        for i, (what, op) in enumerate(_cmp_ops(random.Random(seed))):
            got = (_outcome(op, kernel), _outcome(op, fake))
            assert got[0] == got[1], (seed, i, what, got)
            assert _view(kernel.table()) == _view(fake.table()), (seed, i, what)
        for what, op in (
            ("unpublish all", lambda fw: [fw.unpublish(o) for o in fw.owners()]),
            ("remove networks", lambda fw: [fw.remove_network(n) for n in fw.networks()]),
            ("remove_table", lambda fw: fw.remove_table()),
        ):
            assert _outcome(op, kernel) == _outcome(op, fake) == "ok", (seed, what)
        assert kernel.table() == fake.table() == {}
    finally:
        sh("ip", "netns", "del", ns, check=False)


@pytest.mark.parametrize("topo", ["dockerd-layout"], indirect=True)
def test_docker_user_sync_is_needed_idempotent_and_removable(topo: Topo, owner: str) -> None:
    assert topo.docker_layout
    nft.publish(owner, both("tcp", 8780, 80), netns=topo.host)

    def ours(tool: str) -> list[str]:
        out = sh(tool, "-S", "DOCKER-USER", ns=topo.host).stdout.splitlines()
        return [line for line in out if "portwright" in line]

    try:
        dockeruser.docker_user_sync([], netns=topo.host)
        assert ours("iptables") == [] and ours("ip6tables") == []
        # Docker's own chain content stays
        assert "-A DOCKER-USER -j RETURN" in sh("iptables", "-S", "DOCKER-USER", ns=topo.host).stdout
        # dockerd's FORWARD DROP policy now blocks the published port...
        assert curl(topo.ext, HOST_EXT4, 8780, timeout=1) is None
        assert curl(topo.ext, HOST_EXT6, 8780, timeout=1) is None
        nft.docker_user_sync([topo.net1.bridge, topo.net2.bridge], netns=topo.host)
        nft.docker_user_sync([topo.net2.bridge, topo.net1.bridge], netns=topo.host)
        assert len(ours("iptables")) == 4 and len(ours("ip6tables")) == 4
        # ...and the sync lets it through again, our rules ahead of Docker's RETURN
        assert (
            sh("iptables", "-S", "DOCKER-USER", ns=topo.host).stdout.splitlines()[-1]
            == "-A DOCKER-USER -j RETURN"
        )
        assert curl(topo.ext, HOST_EXT4, 8780) == f"{EXT4} b1 80"
        assert curl(topo.ext, HOST_EXT6, 8780) == f"{EXT6} b1 80"
        # dropping a bridge removes only its rules
        nft.docker_user_sync([topo.net1.bridge], netns=topo.host)
        assert len(ours("iptables")) == 2 and all("pwtbr0" in r for r in ours("iptables"))
    finally:
        nft.docker_user_sync([topo.net1.bridge, topo.net2.bridge], netns=topo.host)


@pytest.mark.parametrize("topo", ["dockerd-layout"], indirect=True)
def test_cni_bridges_in_docker_user_survive_the_engine_sync(topo: Topo) -> None:
    """portwright-cni's accept rules (own tag) are never removed by the engine's sync, and are
    dropped only once their bridge is gone."""
    sh("ip", "link", "add", "pwtcnibr", "type", "bridge", ns=topo.host)
    try:
        for _ in range(2):  # idempotent
            dockeruser.docker_user_ensure(["pwtcnibr"], netns=topo.host)
        nft.docker_user_sync([topo.net1.bridge, topo.net2.bridge], netns=topo.host)
        cni = [
            ln
            for ln in sh("iptables", "-S", "DOCKER-USER", ns=topo.host).stdout.splitlines()
            if dockeruser.CNI_COMMENT in ln
        ]
        assert len(cni) == 2 and all("pwtcnibr" in ln for ln in cni)
        dockeruser.docker_user_forget_missing(netns=topo.host)  # the bridge still exists: kept
        assert sh("iptables", "-S", "DOCKER-USER", ns=topo.host).stdout.count("pwtcnibr") == 2
        sh("ip", "link", "del", "pwtcnibr", ns=topo.host)
        dockeruser.docker_user_forget_missing(netns=topo.host)
        listing = sh("iptables", "-S", "DOCKER-USER", ns=topo.host).stdout
        assert "pwtcnibr" not in listing and topo.net1.bridge in listing  # the engine's rules stay
    finally:
        sh("ip", "link", "del", "pwtcnibr", ns=topo.host, check=False)


def test_network_removal_and_table_removal_leave_nothing(topo: Topo) -> None:
    """Runs last in the module: takes the networks down and removes the table."""
    tag = "pw:" + secrets.token_hex(6)
    nft.publish(tag, both("tcp", 8880, 80), netns=topo.host)
    with pytest.raises(Exception, match="still holds"):
        nft.remove_table(netns=topo.host)
    nft.unpublish(tag, netns=topo.host)
    nft.remove_network(topo.net2.name, netns=topo.host)
    assert nft.networks(netns=topo.host) == {topo.net1.name}
    live = json.dumps(nft.table_json(netns=topo.host))
    assert "pwtbr1" not in live and "pw-net:fw-two" not in live
    nft.remove_network(topo.net1.name, netns=topo.host)
    nft.remove_network(topo.net1.name, netns=topo.host)  # a no-op now
    assert nft.networks(netns=topo.host) == set() and nft.owners(netns=topo.host) == set()
    nft.remove_table(netns=topo.host)
    assert nft.table_json(netns=topo.host) == {}
    assert "portwright" not in sh("nft", "list", "tables", ns=topo.host).stdout
    if topo.docker_layout:
        nft.docker_user_sync([], netns=topo.host)
        assert "portwright" not in sh("iptables-save", ns=topo.host).stdout
        assert "portwright" not in sh("ip6tables-save", ns=topo.host).stdout
    # put the module's state back for any test that pytest orders after this one
    nft.add_network(topo.net1, netns=topo.host)
    nft.add_network(topo.net2, netns=topo.host)
    if topo.docker_layout:
        nft.docker_user_sync([topo.net1.bridge, topo.net2.bridge], netns=topo.host)
