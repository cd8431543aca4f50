"""docker-proxy against the portwright-proxy waiter, under the same private dockerd (issue 15).

``python -m portwright.bench.proxydropin [--rounds N] [--ranges 200,1000] [--seconds S]`` starts
our private dockerd (``dockerd.py``) once per mechanism and round, rotating which mechanism
goes first from round to round, and for each port range ``-p B-(B+N-1):8000-(8000+N-1)``:

- ``publish_s``: how long ``docker run -d`` took (dockerd starts every proxy before it returns);
- ``pss_mb``: the total PSS of every process the proxies cost (docker-proxy processes; or the
  waiters plus the relay and its workers); ``pss_relay_mb``: the relay's and its workers' share.
  PSS splits a shared page among the processes that map it, so the relay's share of the Python
  binary and libraries falls when other Python processes run: the figure is of this machine;
- ``bulk_first``/``bulk_last`` (MB/s): one curl download of a 256 MiB file through the first and
  the last port; ``bulk_four``: four at once on four ports, added up;
- ``conn_first``/``conn_last`` (requests/s): wrk, 32 connections, ``Connection: close``;
  ``conn_four``: four wrk runs at once on four ports, added up;
- ``cpu_us_first``/``cpu_us_four``: CPU time (user+system, every thread) of all the proxy
  processes per request during ``conn_first``/``conn_four``: the efficiency, which a loaded
  machine distorts far less than the rate;
- ``runq_four``: the share of the proxies' runnable time they spent waiting for a CPU
  (/proc/PID/task/TID/schedstat) during ``conn_four``. Near 1 the rate measures the scheduler's
  share (docker-proxy runs more threads) more than the proxy;
- ``remove_s``: ``docker rm -f``.

The container is busybox httpd on the first two and last two container ports, serving from its
own /tmp. Prints one JSON line per measurement and a table of medians. Nothing is left behind:
dockerd.stop removes the containers, dockerd, its directory and docker0.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from .cpu import CLOCK_TICKS, parse_pid_stat
from .dockerd import PrivateDockerd
from .driver import run, wait_until

MECHS = ("docker-proxy", "portwright-proxy", "portwright-proxy-1w")  # -1w: a relay without workers
BIG_MB = 256


def _free_block(n: int) -> int:
    for base in range(20000, 32000 - n, 100):
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("0.0.0.0", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError(f"no {n} free consecutive ports below 32000")


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def classify(argv: list[bytes], names: tuple[bytes, ...]) -> str | None:
    """ "relay" for the shared relay (or one of its workers) of a directory ``names`` lists,
    "proxy" for a process whose program (argv[0]) is one of ``names`` (a docker-proxy or a
    waiter), else None (dockerd too, whose flags name the waiter)."""
    if not argv:
        return None
    if b"portwright.proxy.shared" in argv and any(n in argv for n in names):
        return "relay"
    prog = os.path.basename(argv[0])
    return "proxy" if any(prog == os.path.basename(n) for n in names) else None


def _proxy_pids(names: tuple[bytes, ...], kind: str | None = None) -> list[int]:
    """The pids ``classify`` names (only those of ``kind`` when given)."""
    from ..kernel.proc import argvs

    out = []
    for pid, argv in argvs():
        k = classify(argv, names)
        if k is not None and kind in (None, k):
            out.append(pid)
    return out


def parse_schedstat(text: str) -> tuple[int, int]:
    """/proc/PID/task/TID/schedstat -> (ns on a CPU, ns runnable but waiting for one)."""
    run, wait, _slices = text.split()
    return int(run), int(wait)


def _sched(pids: list[int]) -> tuple[float, float, float]:
    """(CPU seconds, seconds on a CPU, seconds waiting for one) of ``pids``, every thread."""
    ticks, run, wait = 0, 0, 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    u, st = parse_pid_stat(f.read())
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    r, w = parse_schedstat(f.read())
            except (OSError, ValueError):
                continue
            ticks += u + st
            run += r
            wait += w
    return ticks / CLOCK_TICKS, run / 1e9, wait / 1e9


def per_request_us(cpu_s: float, rps: float, seconds: float) -> float:
    """CPU microseconds per request of a run of ``seconds`` at ``rps`` (0 when nothing ran)."""
    n = rps * seconds
    return round(cpu_s * 1e6 / n, 1) if n > 0 else 0.0


def _measured(fn: Callable[[], float], pids: list[int], seconds: float) -> tuple[float, float, float]:
    """(requests/s of ``fn``, proxy CPU us per request, share of runnable time spent waiting)."""
    c0, r0, w0 = _sched(pids)
    rps = fn()
    c1, r1, w1 = _sched(pids)
    busy = (r1 - r0) + (w1 - w0)
    return rps, per_request_us(c1 - c0, rps, seconds), round((w1 - w0) / busy, 2) if busy > 0 else 0.0


def _curl_mbps(port: int) -> float:
    d = run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download}", f"http://127.0.0.1:{port}/big"],
        timeout=120,
    )
    return float(d.stdout or 0) / 1e6 if d.ok else 0.0


def _wrk_rps(port: int, seconds: float, conns: int, threads: int) -> float:
    d = run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(conns),
            "-d",
            f"{seconds:g}s",
            "-H",
            "Connection: close",
            f"http://127.0.0.1:{port}/index.html",
        ],
        timeout=seconds + 60,
    )
    m = re.search(r"Requests/sec:\s+([\d.]+)", d.stdout)
    return float(m.group(1)) if m else 0.0


def _parallel(fns: list[Callable[[], float]]) -> float:
    out: list[float] = [0.0] * len(fns)

    def one(i: int) -> None:
        out[i] = fns[i]()

    ts = [threading.Thread(target=one, args=(i,)) for i in range(len(fns))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(out)


def _container_cmd(n: int) -> list[str]:
    ports = sorted({8000, 8001, 8000 + n - 2, 8000 + n - 1})
    serve = " ".join(f"/bin/busybox httpd -p {p} -h /tmp;" for p in ports)
    return [
        "/bin/sh",
        "-c",
        f"/bin/busybox dd if=/dev/zero of=/tmp/big bs=1M count={BIG_MB} 2>/dev/null; "
        f"echo hello > /tmp/index.html; {serve} exec /bin/sleep 100000",
    ]


def _one(
    d: PrivateDockerd, img: str, mech: str, n: int, seconds: float, names: tuple[bytes, ...]
) -> dict[str, Any]:
    base = _free_block(n)
    last = base + n - 1
    row: dict[str, Any] = {"mech": mech, "ports": n}
    t0 = time.monotonic()
    r = d.docker(
        "run",
        "-d",
        "--name",
        "pwb-dropin",
        "-p",
        f"{base}-{last}:8000-{8000 + n - 1}",
        img,
        *_container_cmd(n),
        timeout=600,
    )
    row["publish_s"] = round(time.monotonic() - t0, 2)
    if not r.ok:
        row["error"] = r.why()
        return row
    try:
        up = wait_until(lambda: _curl_ok(base) and _curl_ok(last) and _big_ready(base), 120, every=0.5)
        if not up:
            row["error"] = "the container's servers did not answer"
            return row
        row["pss_mb"] = round(sum(_pss_kb(p) for p in _proxy_pids(names)) / 1024, 1)
        # of which the shared relay and its workers (the rest: the waiters; docker-proxy: 0)
        row["pss_relay_mb"] = round(sum(_pss_kb(p) for p in _proxy_pids(names, "relay")) / 1024, 1)
        row["processes"] = len(_proxy_pids(names))
        row["bulk_first"] = round(_curl_mbps(base), 1)
        row["bulk_last"] = round(_curl_mbps(last), 1)
        four = [base, base + 1, last - 1, last]
        row["bulk_four"] = round(_parallel([functools.partial(_curl_mbps, p) for p in four]), 1)
        procs = _proxy_pids(names)
        rps, row["cpu_us_first"], _ = _measured(lambda: _wrk_rps(base, seconds, 32, 2), procs, seconds)
        row["conn_first"] = round(rps)
        row["conn_last"] = round(_wrk_rps(last, seconds, 32, 2))
        fours: list[Callable[[], float]] = [functools.partial(_wrk_rps, p, seconds, 16, 1) for p in four]
        rps, row["cpu_us_four"], row["runq_four"] = _measured(lambda: _parallel(fours), procs, seconds)
        row["conn_four"] = round(rps)
    finally:
        t0 = time.monotonic()
        d.docker("rm", "-f", "pwb-dropin", timeout=600)
        row["remove_s"] = round(time.monotonic() - t0, 2)
    return row


def _curl_ok(port: int) -> bool:
    return run(
        ["curl", "-sf", "-o", "/dev/null", "--max-time", "2", f"http://127.0.0.1:{port}/index.html"],
        timeout=10,
    ).ok


def _big_ready(port: int) -> bool:
    d = run(["curl", "-sfI", "--max-time", "2", f"http://127.0.0.1:{port}/big"], timeout=10)
    return d.ok and f"Content-Length: {BIG_MB << 20}" in d.stdout


def measure(
    rounds: int, ranges: tuple[int, ...], seconds: float, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    from ..proxy import waiter

    tmp = tempfile.mkdtemp(prefix="pwb-waiter-")
    binaries = {}
    for mech, workers in (("portwright-proxy", 0), ("portwright-proxy-1w", 1)):
        binary, relay_dir = os.path.join(tmp, mech, "portwright-proxy"), os.path.join(tmp, mech, "run")
        waiter.build(binary, directory=relay_dir, workers=workers)
        binaries[mech] = (binary, relay_dir)
    rows: list[dict[str, Any]] = []
    try:
        for r in range(rounds):
            order = MECHS[r % len(MECHS) :] + MECHS[: r % len(MECHS)]  # each first in turn
            for mech in order:
                extra: tuple[str, ...] = ()
                names: tuple[bytes, ...] = (b"docker-proxy",)
                if mech in binaries:
                    binary, relay_dir = binaries[mech]
                    extra = (f"--userland-proxy-path={binary}",)
                    names = (binary.encode(), relay_dir.encode())
                d = PrivateDockerd(log, extra_args=("--userland-proxy=true", *extra))
                try:
                    d.start()
                    img = d.ensure_image()
                    for n in ranges:
                        row = _one(d, img, mech, n, seconds, names)
                        row["round"] = r
                        log(json.dumps(row))
                        rows.append(row)
                finally:
                    for e in d.stop():
                        log(f"cleanup: {e}")
    finally:
        for _, rdir in binaries.values():
            for pid in _proxy_pids((rdir.encode(),)):
                os.kill(pid, 9)
        run(["rm", "-rf", tmp], timeout=30)
    return rows


KEYS = (
    "publish_s",
    "pss_mb",
    "pss_relay_mb",
    "bulk_first",
    "bulk_last",
    "bulk_four",
    "conn_first",
    "conn_last",
    "conn_four",
    "cpu_us_first",
    "cpu_us_four",
    "runq_four",
    "remove_s",
)


def table(rows: list[dict[str, Any]]) -> str:
    """Medians per (mechanism, range), markdown."""
    head = "| proxy | ports | " + " | ".join(KEYS) + " |"
    out = [head, "|" + "---|" * (len(KEYS) + 2)]
    for n in sorted({r["ports"] for r in rows}):
        for mech in MECHS:
            mine = [r for r in rows if r["mech"] == mech and r["ports"] == n and "error" not in r]
            if not mine:
                continue
            cells = [f"{statistics.median(r[k] for r in mine):g}" for k in KEYS]
            out.append(f"| {mech} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m portwright.bench.proxydropin", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ranges", default="200,1000")
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args(argv)
    rows = measure(
        a.rounds, tuple(int(x) for x in a.ranges.split(",")), a.seconds, lambda s: print(s, flush=True)
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
