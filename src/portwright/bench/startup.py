"""What host-remap adds to ``run`` (issue 12): ``python -m portwright.bench.startup [--rounds N]``.

Each round times, in alternating order, ``portwright run --network host -- true`` and the same
with ``-p HOST:INNER`` (host-remap: allocation, BPF programs loaded and attached to CMD's cgroup,
pinned, then detached and unpinned at teardown), both in the foreground from exec to exit, so a
sample is the whole life of a sandbox: its wall time, and its CPU time (user+system of the run and
everything it waited for, RUSAGE_CHILDREN), which a loaded machine disturbs far less. The summary
is the median of each and the median of the per-round differences. A private state directory is used and removed; the host port is one the kernel
hands out free in both families. The timing is pure arithmetic over the samples (``summarize``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

from .driver import run

DEFAULT_ROUNDS = 20


def _free_port() -> int:
    """A port free in both families (a dual-stack bind to port 0), for the host side of -p."""
    with socket.socket(socket.AF_INET6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        return int(s.getsockname()[1])


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant
    return r.ru_utime + r.ru_stime


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the run and everything it waited for)."""
    c0, t0 = _cpu(), time.perf_counter()
    d = run(argv, env=env, timeout=60)
    elapsed, cpu = time.perf_counter() - t0, _cpu() - c0
    if not d.ok:
        raise SystemExit(f"{' '.join(argv)} failed: {(d.stderr or d.stdout).strip()}")
    return elapsed, cpu


def summarize(samples: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Medians (ms) of the plain and remapped runs and of their per-round difference."""
    plain = [p for p, _ in samples]
    remap = [r for _, r in samples]
    return {
        "host_ms": 1000 * statistics.median(plain),
        "host_remap_ms": 1000 * statistics.median(remap),
        "added_ms": 1000 * statistics.median(r - p for p, r in samples),
        "added_min_ms": 1000 * min(r - p for p, r in samples),
        "added_max_ms": 1000 * max(r - p for p, r in samples),
    }


def _line(what: str, s: dict[str, float], n: int, port: int) -> str:
    return (
        f"{what}: run --network host -- true {s['host_ms']:.1f} ms; with -p {port}:80 (host-remap) "
        f"{s['host_remap_ms']:.1f} ms; added {s['added_ms']:.1f} ms (median of {n} interleaved "
        f"pairs; min {s['added_min_ms']:.1f}, max {s['added_max_ms']:.1f})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m portwright.bench.startup", description=__doc__)
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    args = ap.parse_args(argv)
    state = tempfile.mkdtemp(prefix="pwb-startup-")
    env = {**os.environ, "PORTWRIGHT_STATE_DIR": state}
    base = [sys.executable, "-m", "portwright", "run", "--network", "host"]
    port = _free_port()
    wall: list[tuple[float, float]] = []
    cpu: list[tuple[float, float]] = []
    try:
        _timed([*base, "--", "true"], env)  # warm-up: caches, the pin directory, the probe
        _timed([*base, "-p", f"{port}:80", "--", "true"], env)
        for rnd in range(args.rounds):
            order = [False, True] if rnd % 2 == 0 else [True, False]
            t: dict[bool, tuple[float, float]] = {}
            for remap in order:
                t[remap] = _timed([*base, *(["-p", f"{port}:80"] if remap else []), "--", "true"], env)
            wall.append((t[False][0], t[True][0]))
            cpu.append((t[False][1], t[True][1]))
    finally:
        shutil.rmtree(state, ignore_errors=True)
    print(_line("wall", summarize(wall), len(wall), port))
    print(_line("CPU ", summarize(cpu), len(cpu), port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
