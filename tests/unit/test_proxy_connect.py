"""The relay while a backend connect is pending (issue 13, item 3): a client that leaves releases
both sides at once, and a connect that outlives the connect timeout resets the client.

The backend is a loopback listener with backlog 0 that never accepts: once its accept queue holds
one connection the kernel drops further SYNs, so the relay's connect stays pending, as with a
busy ``python -m http.server`` (backlog 5). No root needed.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest
from loopproxy import abort, relay, wait_until


@contextlib.contextmanager
def stuck_backend() -> Iterator[int]:
    """A backend port whose connects hang (accept queue full, SYNs dropped)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # backlog 0 still queues one; the rest finish or hang in SYN_SENT
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
            fillers.append(f)
        time.sleep(0.2)
        yield port
    finally:
        for f in fillers:
            f.close()
        ls.close()


def test_client_that_leaves_before_the_backend_answers_releases_both() -> None:
    with stuck_backend() as bport, relay("tcp", bport) as (srv, port, key):
        quiet = socket.create_connection(("127.0.0.1", port), timeout=5)
        resetting = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert wait_until(lambda: srv.stats()[key]["active"] == 2), srv.stats()
        quiet.close()  # FIN without a byte sent: nothing to deliver
        abort(resetting)  # RST
        assert wait_until(lambda: srv.stats()[key]["active"] == 0, timeout=3), srv.stats()
        st = srv.stats()[key]
        assert st["abandoned"] == 2 and st["connect_timeouts"] == 0, st


def test_half_closed_request_waits_for_the_backend_then_the_timeout_resets() -> None:
    with stuck_backend() as bport, relay("tcp", bport, connect_timeout=1.0) as (srv, port, key):
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        c.shutdown(socket.SHUT_WR)  # nc -N: the request is complete, the answer still wanted
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)
        time.sleep(0.4)
        assert srv.stats()[key]["active"] == 2, "a half-closed request must not be dropped"
        with pytest.raises(ConnectionResetError):  # the timeout answers with a reset, not EOF
            c.recv(10)
        with pytest.raises(ConnectionResetError):
            silent.recv(10)
        c.close()
        silent.close()
        assert wait_until(lambda: srv.stats()[key]["active"] == 0), srv.stats()
        st = srv.stats()[key]
        assert st["connect_timeouts"] == 2 and st["abandoned"] == 0, st


def test_a_connected_relay_is_not_timed_out() -> None:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    with ls, relay("tcp", ls.getsockname()[1], connect_timeout=0.3) as (srv, port, key):
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        b, _ = ls.accept()
        time.sleep(0.8)  # well past the timeout
        c.sendall(b"ping")
        assert b.recv(4) == b"ping"
        b.sendall(b"pong")
        assert c.recv(4) == b"pong"
        c.close()
        b.close()
        assert srv.stats()[key]["connect_timeouts"] == 0


def test_connect_timeout_must_be_positive() -> None:
    from portwright.proxy.server import ProxyServer

    with pytest.raises(ValueError, match="connect_timeout"):
        ProxyServer([], connect_timeout=0)
