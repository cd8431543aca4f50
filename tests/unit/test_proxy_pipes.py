"""The TCP relay's pooled pipes: a pipe with bytes inside is never handed to another connection.

The pool checks emptiness itself (FIONREAD) instead of trusting its borrower's byte count; the
regression test replays issue 18's leak (a backend reset while a bulk splice was in flight left
one connection's bytes in a pooled pipe, and the next connection sent them first).
"""

from __future__ import annotations

import os
import socket
import threading

from loopproxy import abort, relay, tcp_backend

from portwright.proxy.tcp import PipePool


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_an_empty_pipe_is_reused() -> None:
    pool = PipePool()
    try:
        p = pool.get()
        os.write(p[1], b"passing through")
        assert os.read(p[0], 100) == b"passing through"
        pool.put(p)
        assert pool.get() == p
        pool.put(p)
    finally:
        pool.close()


def test_a_pipe_with_bytes_inside_is_closed_not_pooled() -> None:
    pool = PipePool()
    try:
        p = pool.get()
        os.write(p[1], b"stale bytes of another connection")
        pool.put(p)
        assert pool.free == []
        assert _closed(p[0]) and _closed(p[1])
        q = pool.get()  # a fresh pipe, empty
        try:
            os.read(q[0], 100)
            raise AssertionError("a pipe from the pool held bytes")
        except BlockingIOError:
            pass
        pool.put(q)
    finally:
        pool.close()


def test_a_pipe_that_cannot_be_checked_is_closed() -> None:
    pool = PipePool()
    d1 = os.open("/", os.O_RDONLY)  # FIONREAD on a directory fails (ENOTTY)
    d2 = os.dup(d1)
    pool.put((d1, d2))
    assert pool.free == []
    assert _closed(d1) and _closed(d2)


def test_a_full_pool_closes_what_comes_back() -> None:
    pool = PipePool(cap=1)
    try:
        a, b = pool.get(), pool.get()
        pool.put(a)
        pool.put(b)
        assert pool.free == [a]
        assert _closed(b[0]) and _closed(b[1])
    finally:
        pool.close()


A_READ = 256 << 10
B_SIZE = 4 << 20


def _send_quietly(s: socket.socket, data: bytes, shut: bool) -> None:
    try:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # connection A is reset mid-send: expected


def _read_until(s: socket.socket, limit: int | None) -> bytes:
    got = bytearray()
    while limit is None or len(got) < limit:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def _reset_round(ls: socket.socket, port: int) -> tuple[int, int]:
    """Connection A is reset by the backend mid-bulk; returns (bytes B's backend got, non-B bytes)."""
    a = socket.create_connection(("127.0.0.1", port), timeout=10)
    ta = threading.Thread(target=_send_quietly, args=(a, b"A" * (16 << 20), False))
    ta.start()
    ba, _ = ls.accept()
    ba.settimeout(10)
    _read_until(ba, A_READ)
    abort(ba)  # reset while the proxy is splicing A's bulk upload
    ta.join()
    a.close()
    b = socket.create_connection(("127.0.0.1", port), timeout=10)
    tb = threading.Thread(target=_send_quietly, args=(b, b"B" * B_SIZE, True))
    tb.start()
    bb, _ = ls.accept()
    bb.settimeout(10)
    got = _read_until(bb, None)
    bb.close()
    tb.join()
    b.close()
    return len(got), len(got) - got.count(b"B")


def test_reset_while_bulk_never_leaks_into_the_next_connection() -> None:
    with tcp_backend() as ls:
        ls.settimeout(10)
        with relay("tcp", ls.getsockname()[1], loops=1) as (srv, port, _key):
            rounds = [_reset_round(ls, port) for _ in range(25)]
    leaked = [(i, total, bad) for i, (total, bad) in enumerate(rounds) if bad or total != B_SIZE]
    assert leaked == [], f"(round, bytes received, foreign bytes) for B's backend: {leaked}"
