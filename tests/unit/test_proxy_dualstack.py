"""Proxy mode's one dual-stack ``[::]`` socket per wildcard port (issue 13, item 4).

The IPv4 half of a wildcard request has no socket of its own: the ``[::]:P`` socket (IPV6_V6ONLY
off) serves it, and its IPv4 clients (seen as ``::ffff:a.b.c.d``) must reach the IPv4 half's
backend, while IPv6 clients reach the IPv6 half's, as they do through the NAT path. Two loopback
backends tell the halves apart. No root needed.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator

import pytest

from portwright.kernel.sockets import bind_socket
from portwright.model import Mapping
from portwright.proxy.server import ProxyServer
from portwright.publish.proxy import split_twins, twins_of

ANY4, ANY6 = ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")
LO4, LO6 = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")


def _tcp_tagged(family: int, host: str, tag: bytes) -> tuple[socket.socket, int]:
    ls = socket.socket(family)
    ls.bind((host, 0))
    ls.listen(16)

    def serve() -> None:
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            with c:
                c.sendall(tag)

    threading.Thread(target=serve, daemon=True).start()
    return ls, ls.getsockname()[1]


def _udp_tagged(family: int, host: str, tag: bytes) -> tuple[socket.socket, int]:
    us = socket.socket(family, socket.SOCK_DGRAM)
    us.bind((host, 0))

    def serve() -> None:
        while True:
            try:
                data, peer = us.recvfrom(100)
            except OSError:
                return
            us.sendto(tag + data, peer)

    threading.Thread(target=serve, daemon=True).start()
    return us, us.getsockname()[1]


@pytest.fixture
def backends() -> Iterator[dict[str, int]]:
    socks = []
    ports = {}
    for key, fam, host, make in (
        ("tcp4", socket.AF_INET, "127.0.0.1", _tcp_tagged),
        ("tcp6", socket.AF_INET6, "::1", _tcp_tagged),
        ("udp4", socket.AF_INET, "127.0.0.1", _udp_tagged),
        ("udp6", socket.AF_INET6, "::1", _udp_tagged),
    ):
        s, p = make(fam, host, key.encode())
        socks.append(s)
        ports[key] = p
    yield ports
    for s in socks:
        s.close()


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_one_dual_stack_socket_serves_each_family_to_its_own_backend(
    backends: dict[str, int], proto: str
) -> None:
    s = bind_socket(proto, ANY6, 0, v6only=False)
    port = s.getsockname()[1]
    six = Mapping(proto, ANY6, port, LO6, backends[f"{proto}6"])  # type: ignore[arg-type]
    four = Mapping(proto, ANY4, port, LO4, backends[f"{proto}4"])  # type: ignore[arg-type]
    twins = twins_of([four, six], {six: s})
    assert twins == {six: four}
    with ProxyServer([six], sockets={six: s}, twins=twins) as srv:
        for client_fam, host, want in (
            (socket.AF_INET, "127.0.0.1", f"{proto}4"),
            (socket.AF_INET6, "::1", f"{proto}6"),
        ):
            if proto == "tcp":
                with socket.create_connection((host, port), timeout=5) as c:
                    assert c.recv(10) == want.encode()
            else:
                with socket.socket(client_fam, socket.SOCK_DGRAM) as u:
                    u.settimeout(5)
                    u.sendto(b"!", (host, port))
                    data, peer = u.recvfrom(100)
                    assert data == want.encode() + b"!"
                    assert peer[0] == host  # the reply leaves from the address the client wrote to
        assert srv.stats()[six.docker_format()]["total"] == 2


def test_split_twins_closes_the_passed_copy_and_keeps_a_shared_object() -> None:
    s = bind_socket("tcp", ANY6, 0, v6only=False)
    port = s.getsockname()[1]
    six = Mapping("tcp", ANY6, port, LO6, 80)  # type: ignore[arg-type]
    four = Mapping("tcp", ANY4, port, LO4, 80)  # type: ignore[arg-type]
    try:
        own, twins = split_twins({six: s, four: s})  # one process: the same object twice
        assert own == {six: s} and twins == {six: four} and s.fileno() >= 0
        dup = s.dup()  # another process got its own descriptor for the twin
        own, twins = split_twins({six: s, four: dup})
        assert own == {six: s} and twins == {six: four}
        assert dup.fileno() == -1 and s.fileno() >= 0
    finally:
        s.close()
