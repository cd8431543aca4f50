"""Unit tests for the holder's sockets and relay, over loopback (no root needed)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from portwright.cni import holder
from portwright.cni.holder import Binding


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_placeholder_holds_port_and_accepts_nothing() -> None:
    port = _free_port()
    s = holder.open_socket(Binding("tcp", "127.0.0.1", port), drop_all=True)
    try:
        with socket.socket() as other, pytest.raises(OSError):
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", port))
        with socket.socket() as c:
            c.settimeout(0.3)
            # The SYN is dropped by the filter: no connection is ever established.
            with pytest.raises((TimeoutError, OSError)):
                c.connect(("127.0.0.1", port))
    finally:
        s.close()


def test_udp_placeholder_drops_datagrams() -> None:
    port = _free_port()
    s = holder.open_socket(Binding("udp", "127.0.0.1", port), drop_all=True)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.sendto(b"x", ("127.0.0.1", port))
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recv(10)
    finally:
        s.close()


@pytest.fixture
def echo() -> Iterator[int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                data = b""
                while chunk := c.recv(65536):
                    data += chunk
                c.sendall(data[::-1])  # reply only after the client's half-close

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield int(srv.getsockname()[1])
    stop.set()
    srv.close()


def test_relay_carries_data_and_half_close(echo: int) -> None:
    if not os.path.exists("/proc/net/if_inet6"):
        pytest.skip("no IPv6 on this host")
    port = _free_port()
    b = Binding("tcp", "::1", port, "127.0.0.1", echo)
    srv = holder.start_relay([(b, holder.open_socket(b, drop_all=False))])
    try:
        payload = os.urandom(300_000)
        for _ in range(3):
            with socket.create_connection(("::1", port), timeout=5) as c:
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
                got = b""
                while chunk := c.recv(65536):
                    got += chunk
            assert got == payload[::-1]
        stats = next(iter(srv.stats().values()))
        assert stats["total"] == 3 and stats["bytes_in"] == 3 * len(payload)
    finally:
        srv.stop()


def test_binding_json_round_trip() -> None:
    b = Binding("tcp", "::1", 8081, "198.18.200.5", 80)
    assert Binding.from_json(b.to_json()) == b
    assert b.text == "[::1]:8081/tcp"
