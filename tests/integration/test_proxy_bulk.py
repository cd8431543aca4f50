"""Bulk transfers through ProxyServer with one loop (the default) and with two (EPOLLEXCLUSIVE
listeners shared by both loops): every byte arrives in order, and a connection that moved
megabytes through the splice path still answers small messages afterwards (the switch back to
the recv/send path)."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import random
import socket
import threading
from collections.abc import Iterator

import pytest
from proxynet import Backend, backend_ns, free_port, wait_until

from portwright.model import Mapping
from portwright.proxy.server import ProxyServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def be() -> Iterator[Backend]:
    with backend_ns() as b:
        b.tcp_server(7020)
        yield b


def _recv_exactly(c: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = c.recv(min(1 << 20, n - len(got)))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def _bulk_then_small(port: int, seed: int, size: int) -> None:
    payload = random.Random(seed).randbytes(size)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        sender = threading.Thread(target=c.sendall, args=(payload,))
        sender.start()
        echoed = _recv_exactly(c, size)
        sender.join()
        assert echoed == payload, f"bulk echo corrupted or short ({len(echoed)} of {size})"
        for i in range(3):  # request/response after the bulk phase, on the same connection
            msg = b"small %d\n" % i
            c.sendall(msg)
            assert _recv_exactly(c, len(msg)) == msg
        c.shutdown(socket.SHUT_WR)
        tail = _recv_exactly(c, 64)
    assert tail == b"EOF %d\n" % (size + sum(len(b"small %d\n" % i) for i in range(3)))


@pytest.mark.parametrize("loops", [1, 2])
def test_bulk_then_small_messages(be: Backend, loops: int) -> None:
    p = free_port()
    m = Mapping("tcp", ipaddress.ip_address("127.0.0.1"), p, be.ip4, 7020)
    with ProxyServer([m], loops=loops) as srv:
        sizes = [3 << 20, 8 << 20, 200_000, 65536, 65537] * 2
        with concurrent.futures.ThreadPoolExecutor(len(sizes)) as ex:
            for f in [ex.submit(_bulk_then_small, p, i, n) for i, n in enumerate(sizes)]:
                f.result()
        key = f"127.0.0.1:{p}->7020/tcp"
        assert wait_until(lambda: srv.stats()[key]["active"] == 0)
        st = srv.stats()[key]
        assert st["total"] == len(sizes) and st["errors"] == 0
        assert st["bytes_in"] == sum(sizes) + len(sizes) * 24  # 3 small messages of 8 bytes each
        assert srv.healthy()
