"""The TCP relay under faults: resets while one side is stalled.

A reset is passed on as a reset, and the relay goes away, even when the direction it arrives on
was not being read because its destination was full (backpressure). The randomized stress test
(many connections, resets and half-closes, every byte checked) lives in test_proxy_stress.py.
"""

from __future__ import annotations

import select
import socket

import pytest
from loopproxy import abort, relay, tcp_backend, wait_until


def _send_until_blocked(s: socket.socket) -> int:
    """Send until the socket stays unwritable for a while (all buffers on the way are full)."""
    s.setblocking(False)
    chunk = b"z" * 65536
    sent = 0
    while True:
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            if not select.select([], [s], [], 0.5)[1]:
                return sent


def _drain_to_end(s: socket.socket) -> str:
    """Read until EOF or reset; a relay that stays up makes this time out."""
    s.setblocking(True)
    s.settimeout(10)
    try:
        while s.recv(1 << 20):
            pass
    except ConnectionResetError:
        return "reset"
    return "eof"


@pytest.mark.parametrize("who", ["client", "backend"])
def test_a_reset_on_a_stalled_direction_ends_the_relay(who: str) -> None:
    """``client``: the backend never reads; the client fills every buffer, then resets.
    ``backend``: the mirror image, the client never reads and the backend resets."""
    with tcp_backend() as ls, relay("tcp", ls.getsockname()[1]) as (srv, port, key):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        b, _ = ls.accept()
        try:
            sender, peer = (c, b) if who == "client" else (b, c)
            assert _send_until_blocked(sender) > 0
            assert srv.stats()[key]["active"] == 1
            abort(sender)
            assert wait_until(lambda: srv.stats()[key]["active"] == 0), "the relay is still up"
            assert _drain_to_end(peer) == "reset"  # passed on as a reset, not a clean EOF
        finally:
            c.close()
            b.close()
