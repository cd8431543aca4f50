"""``portwright bench --scale``: how the cost of publishing grows with the number of ports.

Owns the scale experiment. For 1, 100, 1,000 and 10,000 ports it publishes a port range under
each of our publishers (nat, proxy, through the CLI) and under Docker's shapes (its iptables
DNAT chain, one rule per port, installed as one transaction; docker-proxy, one process per port,
capped at ``DOCKER_PROXY_CAP`` processes). For each it measures the setup time, the teardown
time, iperf3 throughput to the first and to the last port of the range, and the PSS of the
publishing processes. The sandbox runs iperf3 on the first and last container port only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import PortwrightError
from . import cpu, iperf3
from .dockerpeer import (
    DockerIptables,
    DockerProxy,
    Forward,
    docker_proxy_available,
    docker_shape,
    iptables_available,
)
from .scenarios import Lab, _bridge_for, free_port_block

SIZES = (1, 100, 1000, 10000)
SHAPES = ("nat", "proxy", "docker-iptables", "docker-proxy")
CONTAINER_BASE = 30000
# 1,000 docker-proxy processes already hold hundreds of MiB; 10,000 would be ~10x that and
# thousands of Go runtimes on 2 cores. Larger sizes are reported as skipped, with this reason.
DOCKER_PROXY_CAP = 1000
# Host ports for the ranges: below Linux's default ephemeral range (32768-60999), so that a
# 10,000-port block is not interleaved with clients' source ports.
HOST_LOW, HOST_HIGH = 10000, 32768


def _servers(first: int, last: int) -> list[str]:
    ports = [first] if first == last else [first, last]
    body = " ".join(f"iperf3 -s -p {p} >/dev/null 2>&1 & p{i}=$!;" for i, p in enumerate(ports))
    pids = " ".join(f"$p{i}" for i in range(len(ports)))
    return ["sh", "-c", f"{body} trap 'kill {pids} 2>/dev/null; wait; exit 0' TERM INT HUP; wait"]


def _iperf(port: int, seconds: float, streams: int) -> iperf3.IperfResult:
    import subprocess
    cmd = iperf3.client_command("127.0.0.1", port, streams, seconds, False)
    cmd[1:1] = ["--connect-timeout", "3000"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        return iperf3.parse("", -1, "iperf3 client timed out")
    return iperf3.parse(p.stdout, p.returncode, p.stderr)


def run_scale(lab: Lab, sizes: tuple[int, ...] = SIZES, shapes: tuple[str, ...] = SHAPES,
              seconds: float = 2.0, streams: int = 4,
              log: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    """Needs ``lab`` opened with a network (``lab.network``); returns one row per (shape, size)."""
    rows: list[dict[str, Any]] = []
    for n in sizes:
        for shape in shapes:
            log(f"scale: {shape} with {n:,} ports")
            row: dict[str, Any] = {"shape": shape, "ports": n, "ok": False, "error": None}
            try:
                _one(lab, shape, n, seconds, streams, row)
            except PortwrightError as e:
                row["error"] = str(e)
            except OSError as e:
                row["error"] = f"{shape} with {n} ports: {e}"
            rows.append(row)
    return rows


def _one(lab: Lab, shape: str, n: int, seconds: float, streams: int, row: dict[str, Any]) -> None:
    pw = lab.pw
    if shape == "docker-proxy":
        why = docker_proxy_available()
        if why:
            row["error"] = f"skipped: {why}"
            return
        if n > DOCKER_PROXY_CAP:
            row["error"] = (f"skipped: {n:,} docker-proxy processes exceed the cap of "
                            f"{DOCKER_PROXY_CAP:,} (one process per port)")
            return
    if shape == "docker-iptables" and iptables_available():
        row["error"] = f"skipped: {iptables_available()}"
        return
    c_first, c_last = CONTAINER_BASE, CONTAINER_BASE + n - 1
    h_first = free_port_block(n, low=HOST_LOW, high=HOST_HIGH)
    h_last = h_first + n - 1
    name = f"pwb{lab.tag}-scale-{shape}-{n}"
    publish: list[str] = []
    mode = None
    if shape in ("nat", "proxy"):
        mode = shape
        publish = [f"{h_first}:{c_first}" if n == 1 else f"{h_first}-{h_last}:{c_first}-{c_last}"]
    lab.sandboxes.append(name)
    created = False
    try:
        t0 = time.monotonic()
        pw.run(name, lab.network, _servers(c_first, c_last), publish=publish, mode=mode, timeout=900)
        t_run = time.monotonic() - t0
        created = True
        info = pw.inspect(name)
        lab._wait_listening(name, sorted({c_first, c_last}), host=False)
        if info.pid:
            lab.server_pids.extend(cpu.descendants(info.pid))
        pids: list[int] = []
        dp: DockerProxy | None = None
        dip: DockerIptables | None = None
        if shape in ("nat", "proxy"):
            row["setup_s"] = t_run
            row["setup_note"] = "portwright run (sandbox + publishing)"
            if info.supervisor_pid:
                pids = [info.supervisor_pid]
        elif shape == "docker-proxy":
            dp = DockerProxy()
            t0 = time.monotonic()
            try:
                for i in range(n):
                    dp.start("0.0.0.0", h_first + i, str(info.ip), c_first + i)
            except BaseException:
                dp.stop()
                raise
            row["setup_s"] = time.monotonic() - t0
            row["setup_note"] = "start and wait ready, one process per port"
            pids = dp.pids
            row["processes"] = len(pids)
        else:
            bridge = _bridge_for(str(info.ip))
            lab.bridge = bridge
            shape_rules = docker_shape(f"PWB-{lab.tag.upper()}-S", bridge, lab.subnet,
                                       [Forward(h_first + i, str(info.ip), c_first + i) for i in range(n)])
            dip = DockerIptables(shape_rules, bridge)
            t0 = time.monotonic()
            dip.install()
            row["setup_s"] = time.monotonic() - t0
            row["setup_note"] = "one iptables-restore transaction (dockerd runs one iptables call per rule)"
        try:
            cost = cpu.read_proc_cost(pids, [info.pid] if info.pid else []) if pids else None
            if cost is not None:
                row["pss_kib"] = cost.pss_kib
            first = _iperf(h_first, seconds, streams)
            time.sleep(0.2)
            last = _iperf(h_last, seconds, streams) if n > 1 else first
            row["first"] = first.to_json()
            row["last"] = last.to_json()
            row["first_gbit"] = first.gbit_per_second
            row["last_gbit"] = last.gbit_per_second
            if first.ok and last.ok and first.gbit_per_second:
                row["last_vs_first"] = (last.gbit_per_second or 0) / first.gbit_per_second
            bad = [r.error or "failed" for r in (first, last) if not r.ok]
            row["ok"] = not bad
            row["error"] = "; ".join(bad) or None
        finally:
            t0 = time.monotonic()
            errors: list[str] = []
            if dp is not None:
                errors += dp.stop()
                row["teardown_s"] = time.monotonic() - t0
            elif dip is not None:
                errors += dip.remove()
                row["teardown_s"] = time.monotonic() - t0
            if errors:
                row["ok"] = False
                row["error"] = "; ".join(errors)
    finally:
        if created or name in lab.sandboxes:
            t0 = time.monotonic()
            errs: list[str] = []
            pw.rm_quiet(name, errs, timeout=900)
            if shape in ("nat", "proxy") and created:
                row["teardown_s"] = time.monotonic() - t0
                row["teardown_note"] = "portwright rm -f (publishing + sandbox)"
            if errs:
                row["ok"] = False
                row["error"] = "; ".join(errs)
            lab.sandboxes.remove(name)


def scale_table(rows: list[dict[str, Any]]) -> str:
    head = (f"  {'shape':<16}{'ports':>7} {'setup s':>9} {'teardown s':>11} {'first Gb/s':>11} "
            f"{'last Gb/s':>10} {'last/first':>11} {'PSS MiB':>9}")
    lines = ["publishing N ports: setup/teardown time, iperf3 to the first and last port, publisher PSS",
             head]
    for r in rows:
        if not r.get("ok") and r.get("first_gbit") is None:
            lines.append(f"  {r['shape']:<16}{r['ports']:>7,} {'FAILED' if not str(r.get('error', '')).startswith('skipped') else ''}"
                         f" {r.get('error') or ''}".rstrip())
            continue

        def n(x: Any, fmt: str) -> str:
            return "-" if x is None else format(x, fmt)
        pss = r.get("pss_kib")
        s = (f"  {r['shape']:<16}{r['ports']:>7,} {n(r.get('setup_s'), '.2f'):>9} {n(r.get('teardown_s'), '.2f'):>11} "
             f"{n(r.get('first_gbit'), '.1f'):>11} {n(r.get('last_gbit'), '.1f'):>10} "
             f"{n(r.get('last_vs_first'), '.2f'):>11} {n(None if pss is None else pss / 1024, '.1f'):>9}")
        if not r.get("ok"):
            s += f"  FAILED: {r.get('error')}"
        lines.append(s)
    return "\n".join(lines)


