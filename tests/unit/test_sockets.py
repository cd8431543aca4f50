"""kernel.sockets: /proc/net parsing, sock_diag message decoding, and a live read of our own sockets."""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

import pytest

from portwright.kernel import sockets
from portwright.kernel.sockets import Listener

DATA = Path(__file__).parent / "data"


def test_parse_proc_net_tcp_keeps_only_listeners() -> None:
    rows = sockets.parse_proc_net((DATA / "diagnose_proc_net_tcp.txt").read_text(), "tcp")
    assert rows == [
        (ipaddress.ip_address("127.0.0.1"), 9000, 31337),
        (ipaddress.ip_address("0.0.0.0"), 8080, 31338),
    ]


def test_parse_proc_net_tcp6_decodes_host_endian_words() -> None:
    rows = sockets.parse_proc_net((DATA / "diagnose_proc_net_tcp6.txt").read_text(), "tcp")
    assert rows == [(ipaddress.ip_address("::1"), 9000, 41337), (ipaddress.ip_address("::"), 8080, 41338)]


def _diag_msg(family: int, ip: str, port: int, inode: int, v6only: int | None) -> bytes:
    raw = socket.inet_pton(family, ip).ljust(16, b"\0")
    body = struct.pack(
        "=BBBB2s2s16s16sI8sIIIII",
        family,
        10,
        0,
        0,
        port.to_bytes(2, "big"),
        b"\0\0",
        raw,
        b"\0" * 16,
        0,
        b"\0" * 8,
        0,
        0,
        0,
        0,
        inode,
    )
    if v6only is not None:
        body += struct.pack("=HHB3x", 5, sockets.INET_DIAG_SKV6ONLY, v6only)
    return struct.pack("=IHHII", 16 + len(body), sockets.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def test_parse_diag_messages_reads_address_port_inode_and_v6only() -> None:
    done = struct.pack("=IHHII", 20, sockets.NLMSG_DONE, 2, 1, 0) + b"\0" * 4
    data = (
        _diag_msg(socket.AF_INET, "127.0.0.1", 9000, 77, None)
        + _diag_msg(socket.AF_INET6, "::", 8080, 78, 0)
        + done
    )
    rows, finished = sockets.parse_diag_messages(data)
    assert finished
    assert rows == [
        (ipaddress.ip_address("127.0.0.1"), 9000, 77, None),
        (ipaddress.ip_address("::"), 8080, 78, False),
    ]


def test_parse_diag_messages_raises_the_kernel_error() -> None:
    err = struct.pack("=IHHII", 20, sockets.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -2)
    with pytest.raises(OSError) as e:
        sockets.parse_diag_messages(err)
    assert e.value.errno == 2


def test_accepts_v4_follows_v6only() -> None:
    dual = Listener("tcp", ipaddress.ip_address("::"), 80, 1, (), False)
    v6 = Listener("tcp", ipaddress.ip_address("::"), 80, 1, (), True)
    loop6 = Listener("tcp", ipaddress.ip_address("::1"), 80, 1, (), False)
    assert dual.accepts_v4 and not v6.accepts_v4 and not loop6.accepts_v4


def test_listeners_sees_our_own_sockets_with_v6only_and_pid() -> None:
    import os

    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    tcp.bind(("::", 0))
    tcp.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        lns = sockets.listeners()
        t = [ln for ln in lns if ln.proto == "tcp" and ln.port == tcp.getsockname()[1]]
        u = [ln for ln in lns if ln.proto == "udp" and ln.port == udp.getsockname()[1]]
        assert len(t) == 1 and t[0].ip == ipaddress.ip_address("::") and t[0].accepts_v4
        assert t[0].v6only is False  # sock_diag told us (the /proc fallback cannot)
        assert os.getpid() in [p.pid for p in t[0].processes]
        assert len(u) == 1 and u[0].ip == ipaddress.ip_address("127.0.0.1")
    finally:
        tcp.close()
        udp.close()


@pytest.mark.parametrize("option", ["SO_REUSEADDR", "SO_REUSEPORT"])
def test_port_free_is_false_for_a_udp_port_held_by_a_sharing_socket(option: str) -> None:
    # A probe that set SO_REUSEADDR itself shared the port with such a holder and called it free.
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.setsockopt(socket.SOL_SOCKET, getattr(socket, option), 1)
    held.bind(("127.0.0.1", 0))
    try:
        port = held.getsockname()[1]
        assert not sockets.port_free("udp", ipaddress.ip_address("127.0.0.1"), port)
        assert not sockets.port_free("udp", ipaddress.ip_address("0.0.0.0"), port)
    finally:
        held.close()
    assert sockets.port_free("udp", ipaddress.ip_address("127.0.0.1"), port)


def test_describe_owner_names_the_process_of_a_dual_stack_clash_only() -> None:
    import os

    v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v4.bind(("0.0.0.0", 0))
    try:
        port = v4.getsockname()[1]
        # A dual-stack [::] bind clashes with 0.0.0.0; a v6-only one does not.
        assert f"pid {os.getpid()} " in sockets.describe_owner(
            "udp", port, ipaddress.ip_address("::"), dual=True
        )
        assert (
            sockets.describe_owner("udp", port, ipaddress.ip_address("::"))
            == "another socket (owner not visible)"
        )
    finally:
        v4.close()
