"""Published ports carry traffic on every path a user tries, in every publish mode.

Parametrized over the publishers (nat, proxy, ebpf) so every mechanism passes the same behaviour
tests: external clients (a separate namespace routed to the host), the host itself on
127.0.0.1, [::1], localhost and its own addresses, other sandboxes and the same sandbox
(hairpin), for TCP and UDP, IPv4 and IPv6. Also: source addresses, loopback-only bindings,
port conflicts, and nothing left after rm or after kill -9 + reconcile.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pwutil import (
    SERVERS,
    curl,
    dockerd_with_forward_drop,
    free_port,
    inspect,
    netns_names,
    nft_owner_elements,
    port_is_free,
    pw,
    tcp_ask,
    temp_network,
    uniq,
    wait_tcp,
)

from conftest import External, sh

pytestmark = pytest.mark.integration
MODES = ["nat", "proxy", "ebpf"]
CPORT = 7000


@dataclass
class Published:
    name: str
    mode: str
    port: int
    lo_port: int
    udp_port: int
    ip4: str
    ip6: str
    id: str


@pytest.fixture(scope="module", params=["plain-host", "with-dockerd"])
def network(request: pytest.FixtureRequest) -> Iterator[str]:
    """The whole suite runs twice: on a plain host, and with a real dockerd (FORWARD DROP)."""
    with contextlib.ExitStack() as stack:
        if request.param == "with-dockerd":
            stack.enter_context(dockerd_with_forward_drop())
        yield stack.enter_context(temp_network("--ipv6", prefix="pub"))


def start(network: str, mode: str, extra: list[str] | None = None) -> Published:
    name = uniq(mode)
    port, lo_port, udp_port = free_port(), free_port(), free_port()
    pw(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "--publish-mode",
        mode,
        "-p",
        f"{port}:{CPORT}",
        "-p",
        f"127.0.0.1:{lo_port}:{CPORT}",
        "-p",
        f"{udp_port}:{CPORT}/udp",
        *(extra or []),
        "--",
        sys.executable,
        str(SERVERS / "peer_server.py"),
        str(CPORT),
    )
    info = inspect(name)
    ns = info["NetworkSettings"]
    wait_tcp(None, ns["IPAddress"], CPORT)
    return Published(
        name, mode, port, lo_port, udp_port, ns["IPAddress"], ns["GlobalIPv6Address"], info["Id"]
    )


@pytest.fixture(params=MODES)
def pub(request: pytest.FixtureRequest, network: str) -> Iterator[Published]:
    p = start(network, request.param)
    yield p
    pw("rm", "-f", p.name, check=False)


def udp_ask(host: str, port: int, size: int = 5, ns: str | None = None) -> str:
    code = (
        "import socket,sys\n"
        f"h,p,n={host!r},{port},{size}\n"
        "s=socket.socket(socket.AF_INET6 if ':' in h else socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.settimeout(1)\n"
        "for i in range(5):\n"
        "    s.sendto(b'x'*n,(h,p))\n"
        "    try:\n"
        "        print(s.recv(65535).decode().strip()); break\n"
        "    except socket.timeout: pass\n"
    )
    return sh(sys.executable, "-c", code, ns=ns, check=False).stdout.strip()


def peer_of(reply: str) -> str:
    assert reply.startswith("PEER "), reply
    return reply.split()[1]


def test_host_local_paths(pub: Published, external: External) -> None:
    for host in ("127.0.0.1", "[::1]", "localhost", str(external.host4), f"[{external.host6}]"):
        assert curl(f"http://{host}:{pub.port}/").startswith("PEER "), host
    reply = tcp_ask("127.0.0.1", pub.port, "local")  # half-close passes through on this path too
    assert reply.startswith("PEER ") and reply.endswith("BYE 0\n"), reply
    assert curl(f"http://127.0.0.1:{pub.lo_port}/").startswith("PEER ")
    for host in ("127.0.0.1", "::1", str(external.host4)):
        assert udp_ask(host, pub.udp_port).startswith("PEER "), host


def test_external_client_keeps_source_address(pub: Published, external: External) -> None:
    gateways = {
        inspect(pub.name)["NetworkSettings"]["Gateway"],
        inspect(pub.name)["NetworkSettings"]["IPv6Gateway"],
    }
    for host, client in ((str(external.host4), external.addr4), (f"[{external.host6}]", external.addr6)):
        reply = curl(f"http://{host}:{pub.port}/", ns=external.ns)
        if pub.mode in ("nat", "ebpf"):  # ebpf: remote clients take the same NAT path
            assert peer_of(reply) == str(client)  # kernel NAT keeps the client's address
        else:
            # A proxy opens its own connection from the host: the server sees the bridge's gateway
            # (--proxy-protocol is how a proxied server learns the client; see the proxy tests).
            assert peer_of(reply) in gateways, reply
    for host, client in ((str(external.host4), external.addr4), (str(external.host6), external.addr6)):
        reply = udp_ask(host, pub.udp_port, ns=external.ns)
        assert reply.startswith("PEER "), host
        if pub.mode in ("nat", "ebpf"):
            assert peer_of(reply) == str(client)


def test_loopback_binding_unreachable_from_outside(pub: Published, external: External) -> None:
    # A neighbour that routes 127.0.0.1 to the host (Docker #45610): drop the local 127/8 route
    # in the external namespace and point 127.0.0.1 at the host.
    sh("sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1", ns=external.ns)
    sh("sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1", ns=external.ns)
    sh("ip", "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local", ns=external.ns)
    sh("ip", "route", "add", "127.0.0.1/32", "via", str(external.host4), "dev", "eth0", ns=external.ns)
    r = sh("nc", "-z", "-w", "2", "127.0.0.1", str(pub.lo_port), ns=external.ns, check=False)
    assert r.returncode != 0
    # ... while the same namespace does reach the wildcard mapping.
    assert (
        sh("nc", "-z", "-w", "2", str(external.host4), str(pub.port), ns=external.ns, check=False).returncode
        == 0
    )


def test_from_other_sandbox_and_hairpin(pub: Published, network: str, external: External) -> None:
    other = uniq("o")
    pw("run", "-d", "--name", other, "--network", network, "--", "sleep", "60")
    try:
        for ns in (f"pw-{other}", f"pw-{pub.name}"):  # another sandbox, then the same one (hairpin)
            for host in (str(external.host4), f"[{external.host6}]"):
                assert curl(f"http://{host}:{pub.port}/", ns=ns).startswith("PEER "), (ns, host)
            for host in (str(external.host4), str(external.host6)):
                assert udp_ask(host, pub.udp_port, ns=ns).startswith("PEER "), (ns, host)
    finally:
        pw("rm", "-f", other)


@pytest.mark.parametrize("mode", MODES)
def test_binding_to_one_host_address(network: str, external: External, mode: str) -> None:
    """-p HOSTIP:P:C answers on that address only (v4 and v6), from the host and from outside."""
    name = uniq("ip")
    port = free_port()
    pw(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "--publish-mode",
        mode,
        "-p",
        f"{external.host4}:{port}:{CPORT}",
        "-p",
        f"[{external.host6}]:{port}:{CPORT}",
        "-p",
        f"{external.host4}:{port}:{CPORT}/udp",
        "--",
        sys.executable,
        str(SERVERS / "peer_server.py"),
        str(CPORT),
    )
    try:
        wait_tcp(None, inspect(name)["NetworkSettings"]["IPAddress"], CPORT)
        for ns in (None, external.ns):
            assert curl(f"http://{external.host4}:{port}/", ns=ns).startswith("PEER ")
            assert curl(f"http://[{external.host6}]:{port}/", ns=ns).startswith("PEER ")
            assert udp_ask(str(external.host4), port, ns=ns).startswith("PEER ")
        # Not on the host's other addresses.
        gw = inspect(name)["NetworkSettings"]["Gateway"]
        for url in (f"http://127.0.0.1:{port}/", f"http://{gw}:{port}/"):
            r = subprocess.run(["curl", "-s", "--max-time", "2", url], capture_output=True, text=True)
            assert r.returncode != 0 and "PEER" not in r.stdout, url
    finally:
        pw("rm", "-f", name)


def test_udp_large_datagram(pub: Published) -> None:
    assert udp_ask("127.0.0.1", pub.udp_port, size=60000).endswith(" 60000")


def test_port_refused_to_second_sandbox_and_host_program(pub: Published, network: str) -> None:
    second, third = uniq("second"), uniq("third")
    r = pw(
        "run",
        "-d",
        "--name",
        second,
        "--network",
        network,
        "-p",
        f"{pub.port}:80",
        "--",
        "sleep",
        "5",
        check=False,
    )
    assert r.returncode != 0 and pub.name in r.stderr and "already in use" in r.stderr
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    s.listen()
    taken = s.getsockname()[1]
    try:
        r = pw(
            "run",
            "-d",
            "--name",
            third,
            "--network",
            network,
            "-p",
            f"{taken}:80",
            "--",
            "sleep",
            "5",
            check=False,
        )
        assert r.returncode != 0 and f"pid {os.getpid()}" in r.stderr
    finally:
        s.close()
    # Nothing of the failed runs is left: no namespace, no state row.
    assert not {f"pw-{second}", f"pw-{third}"} & netns_names()
    names = pw("ps", "-a").stdout
    assert second not in names and third not in names
    # A host program cannot take a published port either, in either family.
    with pytest.raises(OSError):
        with socket.socket() as s2:
            s2.bind(("0.0.0.0", pub.port))
    with pytest.raises(OSError):
        with socket.socket(socket.AF_INET6) as s6:
            s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s6.bind(("::", pub.port))


def test_ss_names_portwright_and_sandbox(pub: Published) -> None:
    out = sh("ss", "-Htlnp", f"sport = :{pub.port}").stdout
    lines = out.splitlines()
    # Held in both families by the sandbox's supervisor: one dual-stack socket (*:P) in every mode
    # (issue 13.4: proxy mode too, so that 10,000 ports fit the descriptor limit); nobody else.
    assert lines and all('"portwright"' in ln for ln in lines), out
    local = [ln.split()[3] for ln in lines]
    assert local == [f"*:{pub.port}"], local
    sup = inspect(pub.name)["State"]["SupervisorPid"]
    assert f"pid={sup}" in out
    with open(f"/proc/{sup}/cmdline", "rb") as f:
        assert pub.name.encode() in f.read()


def test_rm_and_kill9_leave_nothing(network: str) -> None:
    for mode in MODES:
        p = start(network, mode)
        if mode in ("nat", "ebpf"):
            assert nft_owner_elements(f"pw:{p.id}")
        pw("rm", "-f", p.name)
        assert nft_owner_elements(f"pw:{p.id}") == []
        p = start(network, mode)
        sup = inspect(p.name)["State"]["SupervisorPid"]
        os.kill(sup, signal.SIGKILL)
        time.sleep(0.3)
        pw("prune", "-f")
        assert nft_owner_elements(f"pw:{p.id}") == [] and f"pw-{p.name}" not in netns_names()
        # The port is free again.
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", p.port))


def test_publish_all_and_ranges(network: str) -> None:
    name = uniq("P")
    pw(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "-P",
        "--expose",
        f"{CPORT}",
        "--expose",
        "7001-7002/udp",
        "--",
        sys.executable,
        str(SERVERS / "peer_server.py"),
        str(CPORT),
    )
    try:
        maps = inspect(name)["NetworkSettings"]["Mappings"]
        lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
        assert {(m["Proto"], m["ContainerPort"]) for m in maps} == {
            ("tcp", CPORT),
            ("udp", 7001),
            ("udp", 7002),
        }
        assert all(lo <= m["HostPort"] <= hi for m in maps)
        tcp = [m for m in maps if m["Proto"] == "tcp"]
        assert len({m["HostPort"] for m in tcp}) == 1  # v4 and v6 halves share one port
        wait_tcp(None, inspect(name)["NetworkSettings"]["IPAddress"], CPORT)
        assert "PEER" in tcp_ask("127.0.0.1", tcp[0]["HostPort"])
    finally:
        pw("rm", "-f", name)


def test_proxy_counters_move(network: str) -> None:
    p = start(network, "proxy")
    try:
        tcp_ask("127.0.0.1", p.port, "x" * 100)
        stats = json.loads(pw("stats", p.name, "--format", "json").stdout)
        key = f"[::]:{p.port}->{CPORT}/tcp"  # one dual-stack socket serves both families
        assert stats[key]["total"] >= 1 and stats[key]["bytes_in"] >= 100 and stats[key]["bytes_out"] > 0
    finally:
        pw("rm", "-f", p.name)


def test_ranges_skip_taken_and_reserved_ports(network: str) -> None:
    # -p A-B:C takes the first port of the range that nobody holds.
    # Two neighbouring ports below the ephemeral range, so no client connection sits on them.
    taken = next(
        p for p in range(21000 + os.getpid() % 2000 * 2, 30000, 2) if port_is_free(p) and port_is_free(p + 1)
    )
    s = socket.socket()
    s.bind(("0.0.0.0", taken))
    s.listen()
    name = uniq("rg")
    try:
        pw(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "-p",
            f"{taken}-{taken + 1}:{CPORT}",
            "--",
            "sleep",
            "30",
        )
        assert {m["HostPort"] for m in inspect(name)["NetworkSettings"]["Mappings"]} == {taken + 1}
    finally:
        s.close()
        pw("rm", "-f", name, check=False)
    # -P skips ip_local_reserved_ports.
    key = "/proc/sys/net/ipv4/ip_local_reserved_ports"
    lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    old = open(key).read().strip()
    reserved = set(range(lo, lo + 50))
    name = uniq("rs")
    try:
        with open(key, "w") as f:
            f.write(f"{lo}-{lo + 49}")
        pw(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "-P",
            "--expose",
            str(CPORT),
            "--",
            "sleep",
            "30",
        )
        ports = {m["HostPort"] for m in inspect(name)["NetworkSettings"]["Mappings"]}
        assert ports and not ports & reserved
    finally:
        with open(key, "w") as f:
            f.write(old or "\n")
        pw("rm", "-f", name, check=False)


def test_proxy_udp_idle_timeout_is_configurable(network: str) -> None:
    name = uniq("ut")
    port = free_port()
    pw(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "--publish-mode",
        "proxy",
        "--udp-timeout",
        "1",
        "-p",
        f"127.0.0.1:{port}:{CPORT}/udp",
        "--",
        sys.executable,
        str(SERVERS / "peer_server.py"),
        str(CPORT),
    )
    try:
        wait_tcp(None, inspect(name)["NetworkSettings"]["IPAddress"], CPORT)
        assert udp_ask("127.0.0.1", port).startswith("PEER ")
        key = f"127.0.0.1:{port}->{CPORT}/udp"
        assert json.loads(pw("stats", name, "--format", "json").stdout)[key]["udp_flows"] == 1
        deadline = time.time() + 10
        while (
            json.loads(pw("stats", name, "--format", "json").stdout)[key]["udp_flows"]
            and time.time() < deadline
        ):
            time.sleep(0.3)
        assert json.loads(pw("stats", name, "--format", "json").stdout)[key]["udp_flows"] == 0
    finally:
        pw("rm", "-f", name)
    r = pw("run", "--network", network, "--udp-timeout", "0", "--", "true", check=False)
    assert r.returncode == 2 and "--udp-timeout" in r.stderr
