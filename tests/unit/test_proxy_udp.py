"""The UDP relay on loopback (no root): flows per (client, local address), and the flow-table cap."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from loopproxy import relay, wait_until

from portwright.proxy.server import ProxyServer


@contextlib.contextmanager
def udp_echo() -> Iterator[int]:
    """A UDP echo server on 127.0.0.1 in a thread; yields its port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = s.recvfrom(65535)
            except TimeoutError:
                continue
            s.sendto(data, peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield s.getsockname()[1]
    finally:
        stop.set()
        t.join()
        s.close()


def _client() -> socket.socket:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(5)
    return u


def test_one_client_two_local_addresses_get_replies_from_each() -> None:
    with udp_echo() as bport, relay("udp", bport, host="0.0.0.0") as (srv, port, key):
        with _client() as u:
            # the same client address, alternating between two local addresses of the host
            for dst in ("127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"):
                u.sendto(dst.encode(), (dst, port))
                data, src = u.recvfrom(100)
                assert (data, src) == (dst.encode(), (dst, port)), f"sent to {dst}"
        assert srv.stats()[key]["udp_flows"] == 2


def test_the_flow_table_is_capped_and_counts_what_it_drops() -> None:
    cap, spray = 8, 40
    with (
        udp_echo() as bport,
        relay("udp", bport, udp_max_flows=cap, udp_idle_timeout=1.0) as (srv, port, key),
    ):
        with contextlib.ExitStack() as stack:
            legit = stack.enter_context(_client())
            legit.sendto(b"legit", ("127.0.0.1", port))
            assert legit.recv(100) == b"legit"
            sprayers = [stack.enter_context(_client()) for _ in range(spray)]  # one source port each
            for s in sprayers:
                s.sendto(b"spray", ("127.0.0.1", port))
            assert wait_until(lambda: srv.stats()[key]["udp_dropped"] == spray - (cap - 1)), srv.stats()
            st = srv.stats()[key]
            assert st["udp_flows"] == cap and st["total"] == cap and st["errors"] == 0
            # the sprayers that got a flow were answered, and only they
            assert wait_until(lambda: srv.stats()[key]["bytes_out"] == len(b"legit") + 5 * (cap - 1))
            answered = 0
            for s in sprayers:
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    answered += s.recv(100) == b"spray"
            assert answered == cap - 1
            legit.sendto(b"still here", ("127.0.0.1", port))  # an existing flow keeps working
            assert legit.recv(100) == b"still here"
            # once idle flows expire, a client that was refused gets in
            assert wait_until(lambda: srv.stats()[key]["udp_flows"] == 0)
            late = sprayers[-1]
            late.setblocking(True)
            late.settimeout(5)
            late.sendto(b"late", ("127.0.0.1", port))
            assert late.recv(100) == b"late"
            assert srv.stats()[key]["udp_flows"] == 1


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="udp_max_flows 0"):
        ProxyServer([], udp_max_flows=0)
