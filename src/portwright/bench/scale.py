"""``portwright bench --scale``: how the cost of publishing grows with the number of ports.

Owns the scale experiment. For 1, 100, 1,000 and 10,000 ports it publishes a port range under
each shape and measures the setup time, the teardown time, iperf3 throughput to the first and to
the last port of the range, and the PSS of the publishing processes. The shapes:

- ``nat``, ``ebpf``, ``proxy``: our publishers, through the CLI (``portwright run -p A-B:C-D``);
  ``ebpf`` adds one connect-time rewrite entry per binding to nat's maps (issue 11);
- ``docker-iptables``: Docker's iptables DNAT chain, one rule per port, installed as one
  transaction;
- ``docker-proxy``: one process per port, capped at ``DOCKER_PROXY_CAP`` processes;
- ``proxy-dropin`` (on request): portwright-proxy started the dockerd way, one Python process per
  port, capped at ``DROPIN_CAP``; against ``proxy`` this is what one shared relay saves;
- ``nft-only`` (on request): the firewall library alone, no sandbox and no CLI, in throwaway
  namespaces (``fwscale.py``): the time of one publish and one unpublish transaction, and iperf3
  from an external namespace.

The sandbox runs iperf3 on the first and last container port only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import PortwrightError
from . import cpu, iperf3
from .dockerpeer import (
    DOCKER_PROXY,
    DROPIN,
    DockerIptables,
    DockerProxy,
    Forward,
    docker_proxy_available,
    docker_shape,
    dropin_available,
    iptables_available,
)
from .driver import SandboxInfo, run
from .fwscale import NftLab
from .scenarios import Lab, _bridge_for, ebpf_unavailable, free_port_block

SIZES = (1, 100, 1000, 10000)
SHAPES = ("nat", "ebpf", "proxy", "docker-iptables", "docker-proxy")
ALL_SHAPES = (*SHAPES, "proxy-dropin", "nft-only")
CONTAINER_BASE = 30000
# 1,000 docker-proxy processes already hold hundreds of MiB; 10,000 would be ~10x that and
# thousands of Go runtimes on 2 cores. Larger sizes are reported as skipped, with this reason.
DOCKER_PROXY_CAP = 1000
# A drop-in process is a Python interpreter (~10 MiB PSS, ~0.1 s to start): 200 of them show the
# per-port cost without taking minutes and GiBs.
DROPIN_CAP = 200
# Host ports for the ranges: below Linux's default ephemeral range (32768-60999), so that a
# 10,000-port block is not interleaved with clients' source ports.
HOST_LOW, HOST_HIGH = 10000, 32768


def _servers(first: int, last: int) -> list[str]:
    ports = [first] if first == last else [first, last]
    body = " ".join(f"iperf3 -s -p {p} >/dev/null 2>&1 & p{i}=$!;" for i, p in enumerate(ports))
    pids = " ".join(f"$p{i}" for i in range(len(ports)))
    return ["sh", "-c", f"{body} trap 'kill {pids} 2>/dev/null; wait; exit 0' TERM INT HUP; wait"]


def _iperf(port: int, seconds: float, streams: int) -> iperf3.IperfResult:
    cmd = iperf3.client_command("127.0.0.1", port, streams, seconds, False)
    cmd[1:1] = ["--connect-timeout", "3000"]
    p = run(cmd, timeout=seconds + 30)
    if p.timed_out:
        return iperf3.parse("", -1, "iperf3 client timed out")
    return iperf3.parse(p.stdout, p.returncode, p.stderr)


def skip_reason(shape: str, n: int) -> str | None:
    """Why ``shape`` cannot run at ``n`` ports here (a missing tool, a process cap), else None."""
    if shape in ("docker-proxy", "proxy-dropin"):
        why = docker_proxy_available() if shape == "docker-proxy" else dropin_available()
        if why:
            return why
        cap = DOCKER_PROXY_CAP if shape == "docker-proxy" else DROPIN_CAP
        if n > cap:
            return f"{n:,} {shape} processes exceed the cap of {cap:,} (one process per port)"
    if shape == "docker-iptables":
        return iptables_available()
    if shape == "ebpf":
        return ebpf_unavailable() or None
    return None


def run_scale(
    lab: Lab,
    sizes: tuple[int, ...] = SIZES,
    shapes: tuple[str, ...] = SHAPES,
    seconds: float = 2.0,
    streams: int = 4,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict[str, Any]]:
    """Needs ``lab`` opened with a network (``lab.network``) unless the only shape is ``nft-only``;
    returns one row per (shape, size)."""
    rows: list[dict[str, Any]] = []
    nft: NftLab | None = None
    for n in sizes:
        for shape in shapes:
            log(f"scale: {shape} with {n:,} ports")
            row: dict[str, Any] = {"shape": shape, "ports": n, "ok": False, "error": None}
            why = skip_reason(shape, n)
            try:
                if why:
                    row["error"] = f"skipped: {why}"
                elif shape == "nft-only":
                    if nft is None:
                        nft = NftLab()
                        lab.cleanups.append(nft.close)
                        nft.open()
                    nft.measure(n, seconds, streams, row)
                else:
                    _one(lab, shape, n, seconds, streams, row)
            except PortwrightError as e:
                row["error"] = str(e)
            except OSError as e:
                row["error"] = f"{shape} with {n} ports: {e}"
            rows.append(row)
    return rows


@dataclass
class _Published:
    """What one shape set up for a sandbox: the publishing processes and how to undo it."""

    pids: list[int] = field(default_factory=list)
    undo: Callable[[], list[str]] | None = None  # None: the sandbox's rm -f undoes it


def _publish_peer(
    lab: Lab, shape: str, n: int, info: SandboxInfo, h_first: int, c_first: int, row: dict[str, Any]
) -> _Published:
    """Docker's shapes and the drop-in, in front of a sandbox that publishes nothing itself."""
    if shape in ("docker-proxy", "proxy-dropin"):
        dp = DockerProxy(DOCKER_PROXY if shape == "docker-proxy" else DROPIN)
        t0 = time.monotonic()
        try:
            for i in range(n):
                dp.start("0.0.0.0", h_first + i, str(info.ip), c_first + i)
        except BaseException:
            dp.stop()
            raise
        row["setup_s"] = time.monotonic() - t0
        row["setup_note"] = "start and wait ready, one process per port"
        row["processes"] = len(dp.pids)
        return _Published(dp.pids, dp.stop)
    bridge = _bridge_for(str(info.ip))
    lab.bridge = bridge
    shape_rules = docker_shape(
        f"PWB-{lab.tag.upper()}-S",
        bridge,
        lab.subnet,
        [Forward(h_first + i, str(info.ip), c_first + i) for i in range(n)],
    )
    dip = DockerIptables(shape_rules, bridge)
    t0 = time.monotonic()
    try:
        dip.install()
    except BaseException:
        dip.remove()
        raise
    row["setup_s"] = time.monotonic() - t0
    row["setup_note"] = "one iptables-restore transaction (dockerd runs one iptables call per rule)"
    return _Published([], dip.remove)


def _measure(
    pub: _Published,
    info: SandboxInfo,
    h_first: int,
    n: int,
    seconds: float,
    streams: int,
    row: dict[str, Any],
) -> None:
    """PSS of the publishers, then iperf3 to the first and to the last port."""
    cost = cpu.read_proc_cost(pub.pids, [info.pid] if info.pid else []) if pub.pids else None
    if cost is not None:
        row["pss_kib"] = cost.pss_kib
    first = _iperf(h_first, seconds, streams)
    time.sleep(0.2)
    last = _iperf(h_first + n - 1, seconds, streams) if n > 1 else first
    row["first"] = first.to_json()
    row["last"] = last.to_json()
    row["first_gbit"] = first.gbit_per_second
    row["last_gbit"] = last.gbit_per_second
    if first.ok and last.ok and first.gbit_per_second:
        row["last_vs_first"] = (last.gbit_per_second or 0) / first.gbit_per_second
    bad = [r.error or "failed" for r in (first, last) if not r.ok]
    row["ok"] = not bad
    row["error"] = "; ".join(bad) or None


def _fail(row: dict[str, Any], errors: list[str]) -> None:
    if errors:
        row["ok"] = False
        row["error"] = "; ".join(errors)


def _one(lab: Lab, shape: str, n: int, seconds: float, streams: int, row: dict[str, Any]) -> None:
    """One (shape, size) row: a sandbox running iperf3 servers, published by ``shape``."""
    pw = lab.pw
    c_first, c_last = CONTAINER_BASE, CONTAINER_BASE + n - 1
    h_first = free_port_block(n, low=HOST_LOW, high=HOST_HIGH)
    ours = shape in ("nat", "ebpf", "proxy")
    publish = (
        [f"{h_first}:{c_first}" if n == 1 else f"{h_first}-{h_first + n - 1}:{c_first}-{c_last}"]
        if ours
        else []
    )
    name = f"pwb{lab.tag}-scale-{shape}-{n}"
    lab.sandboxes.append(name)
    created = False
    try:
        t0 = time.monotonic()
        pw.run(
            name,
            lab.network,
            _servers(c_first, c_last),
            publish=publish,
            mode=shape if ours else None,
            timeout=900,
        )
        t_run = time.monotonic() - t0
        created = True
        info = pw.inspect(name)
        lab._wait_listening(name, sorted({c_first, c_last}), host=False)
        if info.pid:
            lab.server_pids.extend(cpu.descendants(info.pid))
        if ours:
            row["setup_s"] = t_run
            row["setup_note"] = "portwright run (sandbox + publishing)"
            pub = _Published([info.supervisor_pid] if info.supervisor_pid else [])
        else:
            pub = _publish_peer(lab, shape, n, info, h_first, c_first, row)
        try:
            _measure(pub, info, h_first, n, seconds, streams, row)
        finally:
            if pub.undo is not None:
                t0 = time.monotonic()
                errors = pub.undo()
                row["teardown_s"] = time.monotonic() - t0
                _fail(row, errors)
    finally:
        if created or name in lab.sandboxes:
            t0 = time.monotonic()
            errs: list[str] = []
            pw.rm_quiet(name, errs, timeout=900)
            if ours and created:
                row["teardown_s"] = time.monotonic() - t0
                row["teardown_note"] = "portwright rm -f (publishing + sandbox)"
            _fail(row, errs)
            lab.sandboxes.remove(name)


def scale_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"  {'shape':<16}{'ports':>7} {'setup s':>9} {'teardown s':>11} {'first Gb/s':>11} "
        f"{'last Gb/s':>10} {'last/first':>11} {'PSS MiB':>9}"
    )
    lines = [
        "publishing N ports: setup/teardown time, iperf3 to the first and last port, publisher PSS",
        head,
    ]
    for r in rows:
        if not r.get("ok") and r.get("first_gbit") is None:
            lines.append(
                f"  {r['shape']:<16}{r['ports']:>7,} {'FAILED' if not str(r.get('error', '')).startswith('skipped') else ''}"
                f" {r.get('error') or ''}".rstrip()
            )
            continue

        def n(x: Any, fmt: str) -> str:
            return "-" if x is None else format(x, fmt)

        pss = r.get("pss_kib")
        s = (
            f"  {r['shape']:<16}{r['ports']:>7,} {n(r.get('setup_s'), '.2f'):>9} {n(r.get('teardown_s'), '.2f'):>11} "
            f"{n(r.get('first_gbit'), '.1f'):>11} {n(r.get('last_gbit'), '.1f'):>10} "
            f"{n(r.get('last_vs_first'), '.2f'):>11} {n(None if pss is None else pss / 1024, '.1f'):>9}"
        )
        if not r.get("ok"):
            s += f"  FAILED: {r.get('error')}"
        lines.append(s)
    return "\n".join(lines)
