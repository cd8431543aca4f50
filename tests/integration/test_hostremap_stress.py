"""host-remap under random faults (seeded; the seed is printed, PW_STRESS_SEED replays it): runs on
a small pool of host and inner ports so clashes happen, concurrent runs racing for one host port,
kill -9 of supervisors and of CMDs, rm -f. After every step: each live sandbox answers on its
host port as its inner port, nothing listens on an inner port, no host port has two owners, and
whatever was torn down left no cgroup, no BPF pin and no socket."""

from __future__ import annotations

import concurrent.futures
import os
import random
import signal
import socket
import sys
import time

import pytest
from pwutil import SERVERS, pw, uniq
from test_hostremap import _assert_gone, _cgroup_dir, _listening, _ports, inspect

pytestmark = pytest.mark.integration

STEPS = 18
ACTIONS = ("run", "run", "run", "race", "kill_supervisor", "kill_cmd", "rm")


def _answer(port: int, timeout: float = 8) -> str:
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                return s.makefile().readline().strip()
        except OSError as e:
            last = str(e)
            time.sleep(0.1)
    return f"no answer: {last}"


def _run(name: str, host: int, inner: int) -> tuple[int, str]:
    r = pw("run", "-d", "--name", name, "--network", "host", "-p", f"{host}:{inner}", "--",
           sys.executable, str(SERVERS / "inner_echo.py"), str(inner), check=False)  # fmt: skip
    return r.returncode, r.stderr.strip()


def _wait_gone(sid: str, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and os.path.exists(_cgroup_dir(sid)):
        pw("ps")  # any command reconciles
        time.sleep(0.1)


class World:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.inner = _ports(3)
        self.hosts = [p for p in _ports(8) if p not in self.inner][:4]
        self.live: dict[str, tuple[str, int, int]] = {}  # name -> (sid, host, inner)
        self.names: list[str] = []
        self.gone: list[tuple[str, int]] = []  # (sid, host) torn down

    def start(self, name: str, host: int, inner: int) -> None:
        self.names.append(name)
        code, err = _run(name, host, inner)
        owner = next((n for n, (_, h, _) in self.live.items() if h == host), None)
        if owner is not None:
            assert code != 0 and owner in err and len(err.splitlines()) == 1, err
            return
        assert code == 0, err
        self.live[name] = (inspect(name)["Id"], host, inner)

    def race(self) -> None:
        free = [h for h in self.hosts if h not in {h for _, h, _ in self.live.values()}]
        if not free:
            return
        host, inner = self.rng.choice(free), self.rng.choice(self.inner)
        names = [uniq("hs"), uniq("hs")]
        self.names += names
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            results = list(ex.map(lambda n: _run(n, host, inner), names))
        codes = [code for code, _ in results]
        assert sorted(c == 0 for c in codes) == [False, True], results  # exactly one wins
        winner = names[codes.index(0)]
        self.live[winner] = (inspect(winner)["Id"], host, inner)

    def fault(self, action: str) -> None:
        if not self.live:
            return
        name = self.rng.choice(sorted(self.live))
        sid, host, _ = self.live.pop(name)
        if action == "rm":
            pw("rm", "-f", name)
        else:
            info = inspect(name)["State"]
            os.kill(info["SupervisorPid" if action == "kill_supervisor" else "Pid"], signal.SIGKILL)
            _wait_gone(sid)
        self.gone.append((sid, host))

    def check(self) -> None:
        for name, (_, host, inner) in self.live.items():
            assert _answer(host) == f"inner {inner}", name
        for inner in self.inner:
            assert _listening(inner) == []
        hosts = [h for _, h, _ in self.live.values()]
        assert len(hosts) == len(set(hosts))
        live_hosts = set(hosts)
        for sid, host in self.gone:
            _assert_gone(sid, *([] if host in live_hosts else [host]))


def test_random_runs_clashes_races_and_kills() -> None:
    seed = int(os.environ.get("PW_STRESS_SEED") or random.randrange(1 << 30))
    print(f"host-remap stress seed {seed} (PW_STRESS_SEED={seed} replays it)")
    rng = random.Random(seed)
    w = World(rng)
    try:
        for step in range(STEPS):
            action = rng.choice(ACTIONS)
            if action == "run":
                w.start(uniq("hs"), rng.choice(w.hosts), rng.choice(w.inner))
            elif action == "race":
                w.race()
            else:
                w.fault(action)
            try:
                w.check()
            except AssertionError as e:
                raise AssertionError(f"seed {seed}, step {step} ({action}): {e}") from e
    finally:
        if w.names:
            pw("rm", "-f", *w.names, check=False)
    for sid, _, _ in w.live.values():
        w.gone.append((sid, 0))
    for sid, _ in w.gone:
        _assert_gone(sid)
    for host in w.hosts:
        assert _listening(host) == []
