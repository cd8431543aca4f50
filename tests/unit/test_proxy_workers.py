"""Relay worker processes (issue 15): several processes serve the same listeners, their counters
add up, a removed listener is closed in every process, and workers die with their parent, so no
copy of a listener is left accepting connections that nobody serves. No root needed."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from loopproxy import relay, tcp_backend, wait_until

from portwright.kernel.sockets import bind_socket
from portwright.model import Mapping
from portwright.proxy.workers import WorkerPool, default_workers, resolve_workers


@contextlib.contextmanager
def echo_backend() -> Iterator[int]:
    with tcp_backend() as ls:

        def serve() -> None:
            while True:
                try:
                    c, _ = ls.accept()
                except OSError:
                    return
                with c:
                    c.sendall(c.recv(100))

        threading.Thread(target=serve, daemon=True).start()
        yield ls.getsockname()[1]


def _clients(port: int, threads: int, each: int) -> None:
    def client() -> None:
        for _ in range(each):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(b"hi")
                assert c.recv(10) == b"hi"

    ts = [threading.Thread(target=client) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def test_default_is_one_per_core_at_most_4() -> None:
    assert default_workers() == max(1, min(os.cpu_count() or 1, 4))
    assert resolve_workers(0) == default_workers() and resolve_workers(3) == 3


def test_two_workers_both_serve_and_their_counters_add_up() -> None:
    with echo_backend() as bport, relay("tcp", bport, workers=2) as (srv, port, key):
        _clients(port, threads=8, each=60)
        per = [w[key]["total"] for w in srv.worker_stats()]
        assert len(per) == 2 and all(n > 0 for n in per), per  # the kernel spread the connections
        st = srv.stats()[key]
        assert st["total"] == sum(per) == 480 and st["bytes_in"] == st["bytes_out"] == 960, st


def test_removed_listener_is_closed_in_every_worker() -> None:
    s = bind_socket("tcp", ipaddress.ip_address("127.0.0.1"), 0)
    port = s.getsockname()[1]
    m = Mapping("tcp", ipaddress.ip_address("127.0.0.1"), port, ipaddress.ip_address("127.0.0.1"), 9)  # type: ignore[arg-type]
    pool = WorkerPool(2, name="pw-test-w")
    pool.start()
    try:
        pool.add(7, m, None, s)
        s.close()  # only the workers hold the port now
        with contextlib.closing(socket.socket()) as probe:
            assert probe.connect_ex(("127.0.0.1", port)) == 0  # accepted by a worker's listener
        pool.remove(7)  # returns once every worker closed its copy
        with contextlib.closing(socket.socket()) as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))  # free again at once
        assert all(pool.alive())
    finally:
        pool.stop()
    assert pool.pids == []


HOLDER = r"""
import ipaddress, sys
from portwright.kernel.sockets import bind_socket
from portwright.model import Mapping
from portwright.proxy.server import ProxyServer
ip = ipaddress.ip_address("127.0.0.1")
s = bind_socket("tcp", ip, 0)
m = Mapping("tcp", ip, s.getsockname()[1], ip, 9)
srv = ProxyServer([m], sockets={m: s}, workers=3)
srv.start()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def test_workers_die_with_a_killed_parent_and_leave_no_listener() -> None:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None
        port = int(p.stdout.readline())
        kids = _children(p.pid)
        assert len(kids) == 2, kids
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        assert wait_until(lambda: not any(os.path.exists(f"/proc/{k}") for k in kids), timeout=5)
        with contextlib.closing(socket.socket()) as c:
            assert c.connect_ex(("127.0.0.1", port)) != 0  # refused: nothing half-alive
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        time.sleep(0)
