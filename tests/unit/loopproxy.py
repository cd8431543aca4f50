"""Helpers for proxy tests that need no root: a ProxyServer on loopback in front of a loopback backend.

``relay()`` binds the listener on port 0 (``publish.reserve.bind_socket``, as the supervisor does),
hands it to a ProxyServer and yields the server, the port and the stats key. ``tcp_backend()`` is
a listening socket on 127.0.0.1 whose connections a test handles itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from portwright.model import Mapping
from portwright.proxy.server import ProxyServer
from portwright.publish.reserve import bind_socket


@contextlib.contextmanager
def relay(
    proto: str, backend_port: int, host: str = "127.0.0.1", backend: str = "127.0.0.1", **kw: Any
) -> Iterator[tuple[ProxyServer, int, str]]:
    hip = ipaddress.ip_address(host)
    s = bind_socket(proto, hip, 0)
    port = s.getsockname()[1]
    m = Mapping(proto, hip, port, ipaddress.ip_address(backend), backend_port)  # type: ignore[arg-type]
    with ProxyServer([m], sockets={m: s}, **kw) as srv:
        yield srv, port, m.docker_format()


@contextlib.contextmanager
def tcp_backend() -> Iterator[socket.socket]:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(256)
    try:
        yield ls
    finally:
        ls.close()


def abort(s: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a reset."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


def wait_until(pred: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())
