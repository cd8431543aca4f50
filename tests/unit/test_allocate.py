"""The one port-clash rule (model.bindings_clash) and allocation's checks against known owners.

No root: the rule is pure, and allocation is exercised on loopback with high ports.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from portwright.errors import PortInUse
from portwright.kernel.sockets import Listener
from portwright.model import Mapping, bindings_clash
from portwright.publish.base import Target, allocate
from portwright.spec import parse_publish as parse_port

A = ipaddress.ip_address
SANDBOX4 = ipaddress.IPv4Address("198.18.0.2")

# (a, a_dual, b, b_dual, clash): bind()'s rule, one case per line.
CASES = [
    ("0.0.0.0", False, "0.0.0.0", False, True),
    ("0.0.0.0", False, "127.0.0.1", False, True),  # the wildcard covers every v4 address
    ("127.0.0.1", False, "127.0.0.2", False, False),
    ("127.0.0.1", False, "127.0.0.1", False, True),
    ("::", False, "::", False, True),
    ("::", False, "::1", False, True),
    ("::1", False, "2001:2::1", False, False),
    ("::", False, "0.0.0.0", False, False),  # a v6-only [::] leaves IPv4 alone
    ("::", False, "127.0.0.1", False, False),
    ("::", True, "0.0.0.0", False, True),  # a dual-stack [::] holds IPv4 too
    ("::", True, "127.0.0.1", False, True),
    ("::", True, "::", False, True),  # same address, whatever the flags
    ("::1", True, "127.0.0.1", False, False),  # only the wildcard is dual-stack in effect
    ("::ffff:127.0.0.1", True, "127.0.0.1", False, True),  # a v4-mapped dual binding is that v4 address
    ("::ffff:127.0.0.1", True, "127.0.0.2", False, False),
    ("::ffff:127.0.0.1", True, "0.0.0.0", False, True),
    ("0.0.0.0", False, "::1", False, False),
]


@pytest.mark.parametrize(("a", "a_dual", "b", "b_dual", "want"), CASES)
def test_bindings_clash_is_binds_rule_and_symmetric(
    a: str, a_dual: bool, b: str, b_dual: bool, want: bool
) -> None:
    assert bindings_clash(A(a), A(b), a_dual=a_dual, b_dual=b_dual) is want
    assert bindings_clash(A(b), A(a), a_dual=b_dual, b_dual=a_dual) is want


def test_listener_clash_reads_v6only_and_unknown_is_dual_stack() -> None:
    def ln(ip: str, v6only: bool | None, proto: str = "udp", port: int = 19541) -> Listener:
        return Listener(proto, A(ip), port, 1, (), v6only)

    assert ln("::", False).clashes("udp", A("0.0.0.0"), 19541)
    assert not ln("::", True).clashes("udp", A("0.0.0.0"), 19541)
    assert ln("::", None).clashes("udp", A("127.0.0.1"), 19541)  # Linux's default: IPV6_V6ONLY off
    assert ln("::", True).clashes("udp", A("::"), 19541)
    assert ln("0.0.0.0", None).clashes("udp", A("::"), 19541, dual=True)  # our dual-stack socket
    assert not ln("0.0.0.0", None).clashes("udp", A("::"), 19541)
    assert not ln("0.0.0.0", None).clashes("tcp", A("0.0.0.0"), 19541)  # other protocol
    assert not ln("0.0.0.0", None).clashes("udp", A("0.0.0.0"), 19542)  # other port


def _free_udp_tcp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_a_port_a_known_sandbox_holds_is_refused_naming_it(proto: str) -> None:
    # Nothing holds the port in the kernel: only the record says a sandbox has it.
    port = _free_udp_tcp_port()
    theirs = Mapping(proto, A("0.0.0.0"), port, A("198.18.0.9"), 5000)  # type: ignore[arg-type]
    with pytest.raises(PortInUse) as e:
        allocate(
            [parse_port(f"127.0.0.1:{port}:5000/{proto}")],
            Target(SANDBOX4, None),
            [("sandbox 'web' (abc)", theirs)],
            ipv6_host=False,
        )
    assert "sandbox 'web' (abc)" in str(e.value) and f"127.0.0.1:{port}/{proto}" in str(e.value)


def test_a_known_v6_only_mapping_leaves_the_v4_address_free() -> None:
    port = _free_udp_tcp_port()
    theirs = Mapping("udp", A("::"), port, A("198.18.0.9"), 5000)
    bound = allocate(
        [parse_port(f"127.0.0.1:{port}:5000/udp")],
        Target(SANDBOX4, None),
        [("sandbox 'v6' (abc)", theirs)],
        ipv6_host=False,
    )
    try:
        assert [m.host_port for m, _ in bound] == [port]
    finally:
        for _, s in bound:
            if s is not None:
                s.close()


def test_a_range_skips_a_port_a_known_sandbox_holds() -> None:
    port = _free_udp_tcp_port()
    nxt = port + 1
    theirs = Mapping("udp", A("127.0.0.1"), port, A("198.18.0.9"), 5000)
    try:
        bound = allocate(
            [parse_port(f"127.0.0.1:{port}-{nxt}:5000/udp")],
            Target(SANDBOX4, None),
            [("sandbox 'web' (abc)", theirs)],
            ipv6_host=False,
        )
    except PortInUse:
        pytest.skip(f"port {nxt} is in use on this host")
    try:
        assert [m.host_port for m, _ in bound] == [nxt]
    finally:
        for _, s in bound:
            if s is not None:
                s.close()


def test_a_udp_port_our_process_holds_with_so_reuseaddr_is_refused() -> None:
    # Before the fix, a reservation set SO_REUSEADDR on UDP and shared the port with this socket.
    port = _free_udp_tcp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", port))
        with pytest.raises(PortInUse) as e:
            allocate([parse_port(f"127.0.0.1:{port}:5000/udp")], Target(SANDBOX4, None), [], ipv6_host=False)
    assert f"127.0.0.1:{port}/udp" in str(e.value) and "pid " in str(e.value)
