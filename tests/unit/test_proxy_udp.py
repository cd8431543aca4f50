"""The UDP relay on loopback (no root): flows per (client, local address)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from loopproxy import relay


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
