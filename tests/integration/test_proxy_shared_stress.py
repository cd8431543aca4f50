"""Seeded random registrations, departures and faults against the shared relay (issue 15).

The relay owns ports for dockerd and hands new ones to its workers in batches; this drives it the
way a busy Docker host would, with faults: waiters registering in bursts, leaving with SIGTERM or
dying with SIGKILL (some within the batch window), a worker killed with SIGKILL, and connections
to live and departed ports between the steps. After every step the invariants hold: each live
port echoes through the relay, each departed port refuses connections (no process, worker
included, kept a copy), and the relay's status lists exactly the live ports. Bounded (a fixed
number of steps and ports); the seed is printed, and ``PW_STRESS_SEED`` replays a run.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator

from proxynet import free_port, wait_until
from test_proxy_shared import Lab, echo, flags, lab, refused  # noqa: F401 (fixture)

from portwright.proxy import shared

STEPS = 40
MAX_LIVE = 12


@contextlib.contextmanager
def sturdy_echo_server() -> Iterator[int]:
    """An echo backend that outlives resets: a connection caught in a killed worker is reset on
    both sides (as with any killed server), and one reset must not stop the backend."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(128)

    def serve(c: socket.socket) -> None:
        with c, contextlib.suppress(OSError):
            data = b""
            while chunk := c.recv(65536):
                data += chunk
            c.sendall(data + b"|ok")

    def accept() -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def _dead(pid: int) -> bool:
    """Gone, or a zombie: its sockets are closed either way."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _live_bindings(directory: str) -> set[int]:
    return {int(p["binding"].rsplit(":", 1)[1].split("/")[0]) for p in shared.query(directory)["ports"]}


def _in_all_workers(directory: str) -> bool:
    st = shared.query(directory)
    return all(p["in_workers"] == len(st["workers"]) - 1 for p in st["ports"])


def test_random_registrations_departures_and_faults(lab: Lab) -> None:  # noqa: F811
    seed = int(os.environ.get("PW_STRESS_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (PW_STRESS_SEED={seed} replays it)")
    rnd = random.Random(seed)
    live: dict[int, subprocess.Popen[bytes]] = {}
    gone: list[int] = []
    with sturdy_echo_server() as b:
        for step in range(STEPS):
            action = rnd.choice(["burst", "burst", "term", "kill", "kill_worker", "probe"])
            where = f"seed {seed} step {step} {action}"
            if action == "burst" and len(live) < MAX_LIVE:
                for _ in range(rnd.randint(1, 4)):
                    port = free_port()
                    while port in gone:  # a departed port is probed below: never reuse one
                        port = free_port()
                    w, st = lab.spawn(*flags("tcp", "127.0.0.1", port, b))
                    assert st == b"0\n", (where, st)
                    live[port] = w
                    if rnd.random() < 0.25:  # leaves inside the 50 ms batch window
                        w.send_signal(rnd.choice([signal.SIGTERM, signal.SIGKILL]))
                        w.wait(timeout=5)
                        del live[port]
                        gone.append(port)
            elif action in ("term", "kill") and live:
                port = rnd.choice(sorted(live))
                w = live.pop(port)
                w.send_signal(signal.SIGTERM if action == "term" else signal.SIGKILL)
                assert w.wait(timeout=5) in (0, -signal.SIGKILL), where
                gone.append(port)
            elif action == "kill_worker" and live and (os.cpu_count() or 1) >= 2:
                workers = shared.query(lab.dir)["workers"][1:]
                if workers:
                    victim = rnd.choice(workers)
                    os.kill(victim, signal.SIGKILL)
                    assert wait_until(lambda victim=victim: _dead(victim), timeout=3), where
            for port in sorted(live):
                assert echo(port, b"s%d" % step) == b"s%d|ok" % step, (where, port)
            for port in gone[-6:]:
                assert wait_until(lambda port=port: refused(port), timeout=3), (where, "still open", port)
            if live:
                assert wait_until(lambda: _live_bindings(lab.dir) == set(live), timeout=3), (
                    where,
                    sorted(live),
                    sorted(_live_bindings(lab.dir)),
                )
                # every live port reaches every worker (its batch went out; a killed worker's
                # replacement was handed all of them)
                assert wait_until(lambda: _in_all_workers(lab.dir), timeout=3), (where, shared.query(lab.dir))
        for w in live.values():
            w.send_signal(signal.SIGTERM)
            assert w.wait(timeout=5) == 0
        for port in list(live) + gone:
            assert wait_until(lambda port=port: refused(port), timeout=3), (seed, "left open", port)
