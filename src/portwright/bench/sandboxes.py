"""``portwright bench --sandboxes N``: what an idle sandbox costs to keep and to remove, against Docker.

Owns the experiment. Each round starts N idle detached sandboxes (``portwright run -d -- sleep
infinity``) and then reads the PSS (``/proc/PID/smaps_rollup``) of every process portwright keeps
only because they exist: the supervisors (``inspect`` names them), whatever they run besides the
sandbox command, their portwright ancestors (a fork server such as ``pw-zygote``), and any other
portwright process whose command line names the state directory. The cost per sandbox is that
total divided by N. Then it times ONE ``portwright rm -f`` of all N. The same for Docker when a
private dockerd can run (``dockerd.py``): N busybox containers running ``sleep``, the PSS of their
containerd shims (and of the docker-proxy processes dockerd starts for ``-p``), one ``docker rm
-f`` of all N. Shared daemons (dockerd, containerd) are left out, as they exist without
containers.

Two variants: ``none`` (``--network none``) and ``published`` (a bridge network, one ``-p`` per
sandbox; the bench's own network on our side, docker0 on Docker's). Systems and variants are
interleaved for ``rounds`` rounds, in alternating order; the summary gives medians and the ratio
portwright / Docker. The process selection and the report are pure functions over a process table,
unit-tested without root; ``run_sandboxes`` is the only I/O.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import PortwrightError
from ..kernel import proc
from ..state import state_dir
from . import cpu, dockerd
from .driver import SandboxInfo
from .scenarios import Lab, free_port_block

VARIANTS = ("none", "published")
SYSTEMS = ("portwright", "docker")
DEFAULT_N = 20
SLEEP = ["sleep", "infinity"]
DOCKER_SLEEP = ["sleep", "1000000"]  # busybox's sleep takes seconds
CONTAINER_PORT = 80
#: Seconds between the last start and the PSS reading: forked pages settle, lazy imports finish.
SETTLE_S = 2.0
#: Host ports for ``published``: below the ephemeral range, as --scale does.
HOST_LOW, HOST_HIGH = 10000, 32768
PW_PREFIXES = ("portwright", "pw-")  # comm of portwright's processes (15 characters at most)


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    ppid: int
    comm: str
    cmdline: str


def parse_stat(text: str) -> tuple[str, int]:
    """(comm, ppid) from /proc/PID/stat; comm may hold spaces and parentheses."""
    comm = text[text.index("(") + 1 : text.rindex(")")]
    return comm, int(text[text.rindex(")") + 2 :].split()[1])


def read_proc_table() -> dict[int, Proc]:
    """Every process now: pid -> Proc (processes that exit while being read are left out)."""
    out: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                comm, ppid = parse_stat(f.read())
        except (OSError, ValueError, IndexError):
            continue
        cmdline = proc.argv_text(int(entry))
        if cmdline is not None:
            out[int(entry)] = Proc(int(entry), ppid, comm, cmdline)
    return out


def _children(table: dict[int, Proc]) -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in table.values():
        kids.setdefault(p.ppid, []).append(p.pid)
    return kids


def _tree(roots: Iterable[int], kids: dict[int, list[int]]) -> set[int]:
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(kids.get(p, ()))
    return seen


def portwright_kept(
    table: dict[int, Proc], supervisors: Iterable[int], commands: Iterable[int], state: str
) -> set[int]:
    """The processes portwright keeps for its sandboxes (see the module docstring): supervisors
    and their descendants, their portwright ancestors, and portwright processes naming ``state``;
    never a sandbox command or anything it started."""
    kids = _children(table)
    theirs = _tree((c for c in commands if c in table), kids)
    sups = [s for s in supervisors if s in table]
    kept = _tree(sups, kids) - theirs
    for s in sups:
        p = table[s].ppid
        while p in table and table[p].comm.startswith(PW_PREFIXES) and p not in kept:
            kept.add(p)
            p = table[p].ppid
    kept |= {
        p.pid
        for p in table.values()
        if p.comm.startswith(PW_PREFIXES) and state in p.cmdline.split() and p.pid not in theirs
    }
    return kept


def docker_kept(table: dict[int, Proc], root: str, dockerd_pid: int | None) -> set[int]:
    """The processes our dockerd keeps per container: containerd shims of its containerd (their
    command lines name its directory) and the docker-proxy processes it started."""
    shims = {p.pid for p in table.values() if p.comm.startswith("containerd-shim") and root in p.cmdline}
    proxies = {p.pid for p in table.values() if p.comm == "docker-proxy" and p.ppid == dockerd_pid}
    return shims | proxies


def read_pss(pids: Iterable[int]) -> dict[int, int]:
    """PSS in KiB of each process that is still there."""
    out: dict[int, int] = {}
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup", encoding="ascii") as f:
                out[p] = cpu.parse_smaps_rollup_pss_kib(f.read())
        except (OSError, ValueError):
            continue
    return out


def breakdown(table: dict[int, Proc], pss: dict[int, int]) -> dict[str, dict[str, int]]:
    """Kept processes grouped by comm: how many, and their PSS in KiB."""
    out: dict[str, dict[str, int]] = {}
    for pid, kib in sorted(pss.items()):
        slot = out.setdefault(table[pid].comm if pid in table else "?", {"count": 0, "pss_kib": 0})
        slot["count"] += 1
        slot["pss_kib"] += kib
    return out


# ---- one round of one system ---------------------------------------------------------------


def _sample(system: str, variant: str, rnd: int, n: int) -> dict[str, Any]:
    return {
        "system": system,
        "variant": variant,
        "round": rnd,
        "n": n,
        "ok": False,
        "error": None,
        "start_s": None,
        "rm_s": None,
        "pss_kib": None,
        "per_sandbox_kib": None,
        "processes": {},
        "left_after_rm": None,
    }


def _measure(sample: dict[str, Any], table: dict[int, Proc], kept: set[int]) -> None:
    pss = read_pss(kept)
    sample["processes"] = breakdown(table, pss)
    sample["pids"] = sorted(pss)
    sample["pss_kib"] = sum(pss.values())
    sample["per_sandbox_kib"] = sample["pss_kib"] / sample["n"]


def portwright_round(lab: Lab, n: int, variant: str, rnd: int) -> dict[str, Any]:
    """N sandboxes up, their kept processes read, then one ``rm -f`` of all N, timed."""
    s = _sample("portwright", variant, rnd, n)
    names = [f"pwb{lab.tag}-r{rnd}{variant[0]}{i}" for i in range(n)]
    base = free_port_block(n, low=HOST_LOW, high=HOST_HIGH) if variant == "published" else 0
    created: list[str] = []
    infos: list[SandboxInfo] = []
    try:
        t0 = time.monotonic()
        for i, name in enumerate(names):
            lab.sandboxes.append(name)
            pub = [f"{base + i}:{CONTAINER_PORT}"] if variant == "published" else None
            lab.pw.run(name, "none" if variant == "none" else lab.network, SLEEP, publish=pub)
            created.append(name)
        s["start_s"] = time.monotonic() - t0
        infos = lab.pw.inspect_all(names)
        time.sleep(SETTLE_S)
        table = read_proc_table()
        sups = [i.supervisor_pid for i in infos if i.supervisor_pid]
        kept = portwright_kept(table, sups, [i.pid for i in infos if i.pid], state_dir())
        _measure(s, table, kept)
        s["ok"] = len(sups) == n
        if not s["ok"]:
            s["error"] = f"inspect named {len(sups)} supervisors for {n} sandboxes"
    except PortwrightError as e:
        s["error"] = str(e)
    finally:
        if created:
            t0 = time.monotonic()
            try:
                lab.pw.rm(*created, timeout=600)
                s["rm_s"] = time.monotonic() - t0
                for name in created:  # a failed start stays listed: the lab's close removes it
                    lab.sandboxes.remove(name)
            except PortwrightError as e:
                s["ok"], s["error"] = False, f"rm -f: {e}"
    s["left_after_rm"] = [i.supervisor_pid for i in infos if i.supervisor_pid and _alive(i.supervisor_pid)]
    return s


def docker_round(
    d: dockerd.PrivateDockerd, image: str, n: int, variant: str, rnd: int, tag: str
) -> dict[str, Any]:
    """N busybox containers up, their shims (and proxies) read, then one ``docker rm -f``, timed."""
    s = _sample("docker", variant, rnd, n)
    names = [f"pwb{tag}-d{rnd}{variant[0]}{i}" for i in range(n)]
    base = free_port_block(n, low=HOST_LOW, high=HOST_HIGH) if variant == "published" else 0
    created: list[str] = []
    kept: set[int] = set()
    try:
        t0 = time.monotonic()
        for i, name in enumerate(names):
            net = ["--network", "none"] if variant == "none" else ["-p", f"{base + i}:{CONTAINER_PORT}"]
            r = d.docker("run", "-d", "--name", name, *net, image, *DOCKER_SLEEP)
            if not r.ok:
                raise PortwrightError(f"docker run {name}: {r.why()}")
            created.append(name)
        s["start_s"] = time.monotonic() - t0
        time.sleep(SETTLE_S)
        table = read_proc_table()
        kept = docker_kept(table, d.root or "", d.pid)
        _measure(s, table, kept)
        shims = sum(v["count"] for k, v in s["processes"].items() if k.startswith("containerd-shim"))
        s["ok"] = shims == n
        if not s["ok"]:
            s["error"] = f"found {shims} containerd shims for {n} containers"
    except PortwrightError as e:
        s["error"] = str(e)
    finally:
        if created:
            t0 = time.monotonic()
            r = d.docker("rm", "-f", *created, timeout=600)
            s["rm_s"] = time.monotonic() - t0
            if not r.ok:
                s["ok"], s["error"], s["rm_s"] = False, f"docker rm -f: {r.why()}", None
    s["left_after_rm"] = sorted(p for p in kept if _alive(p) and p != d.pid)
    return s


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    return text[text.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def start_docker(
    lab: Lab, log: Callable[[str], None]
) -> tuple[dockerd.PrivateDockerd | None, str, str | None]:
    """(dockerd, image, None) when Docker can be measured, else (None, "", why). The dockerd is
    registered with the lab's cleanups before it starts, so Ctrl-C at any point removes it."""
    why = dockerd.unavailable()
    if why:
        return None, "", why
    d = dockerd.PrivateDockerd(log)
    lab.cleanups.append(d.stop)
    try:
        d.start()
        return d, d.ensure_image(), None
    except PortwrightError as e:
        lab.cleanups.remove(d.stop)
        errors = d.stop()
        return None, "", "; ".join([str(e), *errors])


def run_sandboxes(
    lab: Lab,
    n: int = DEFAULT_N,
    rounds: int = 3,
    variants: tuple[str, ...] = VARIANTS,
    docker: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Interleaved rounds of both systems and every variant; the result for ``--json``."""
    d, image, why = start_docker(lab, log) if docker else (None, "", "not asked for (--sandboxes-no-docker)")
    if why:
        log(f"sandboxes: Docker is not measured: {why}")
    samples: list[dict[str, Any]] = []
    for rnd in range(1, rounds + 1):
        order = [(sy, v) for v in variants for sy in SYSTEMS]
        if rnd % 2 == 0:
            order.reverse()
        for system, variant in order:
            if system == "docker" and d is None:
                continue
            log(f"sandboxes: round {rnd}/{rounds}: {n} {system} ({variant})")
            if system == "portwright":
                samples.append(portwright_round(lab, n, variant, rnd))
            else:
                assert d is not None
                samples.append(docker_round(d, image, n, variant, rnd, lab.tag))
    return {
        "n": n,
        "rounds": rounds,
        "variants": list(variants),
        "docker_skipped": why,
        "samples": samples,
        "summary": summarize(samples),
    }


# ---- report (pure) ---------------------------------------------------------------------------


def _median(xs: Iterable[float | None]) -> float | None:
    good = [x for x in xs if x is not None]
    return statistics.median(good) if good else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def summarize(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, system) with medians over the successful rounds, then one ratio row
    per variant (portwright / Docker) where both were measured."""
    rows: list[dict[str, Any]] = []
    for variant in [v for v in VARIANTS if any(s["variant"] == v for s in samples)]:
        med: dict[str, dict[str, Any]] = {}
        for system in SYSTEMS:
            mine = [s for s in samples if (s["variant"], s["system"]) == (variant, system)]
            if not mine:
                continue
            ok = [s for s in mine if s["ok"]]
            comms: dict[str, int] = {}
            for s in ok:
                for comm, v in s["processes"].items():
                    comms[comm] = max(comms.get(comm, 0), v["count"])
            med[system] = row = {
                "variant": variant,
                "system": system,
                "n": mine[0]["n"],
                "rounds": len(mine),
                "failed": len(mine) - len(ok),
                "per_sandbox_kib": _median(s["per_sandbox_kib"] for s in ok),
                "pss_kib": _median(s["pss_kib"] for s in ok),
                "rm_s": _median(s["rm_s"] for s in ok),
                "start_s": _median(s["start_s"] for s in ok),
                "processes": comms,
                "errors": sorted({str(s["error"]) for s in mine if not s["ok"]}),
            }
            rows.append(row)
        if "portwright" in med and "docker" in med:
            pw, dk = med["portwright"], med["docker"]
            rows.append(
                {
                    "variant": variant,
                    "system": "portwright/docker",
                    "ratio": True,
                    "per_sandbox_kib": _ratio(pw["per_sandbox_kib"], dk["per_sandbox_kib"]),
                    "rm_s": _ratio(pw["rm_s"], dk["rm_s"]),
                    "start_s": _ratio(pw["start_s"], dk["start_s"]),
                }
            )
    return rows


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table(result: dict[str, Any]) -> str:
    """The terminal table of ``run_sandboxes``' result."""
    n, rounds = result["n"], result["rounds"]
    lines = [
        f"idle sandboxes: PSS of the processes kept for {n} of them (per sandbox = total / {n}), "
        f"one rm -f of all {n}, and starting them one by one; medians of {rounds} rounds",
        f"  {'variant':<10} {'system':<18} {'MiB each':>9} {'MiB total':>10} {'rm -f all s':>12} "
        f"{'start all s':>12}  kept processes",
    ]
    for r in result["summary"]:
        if r.get("ratio"):
            lines.append(
                f"  {r['variant']:<10} {r['system']:<18} {_num(r['per_sandbox_kib'], '.2f'):>9} "
                f"{'':>10} {_num(r['rm_s'], '.2f'):>12} {_num(r['start_s'], '.2f'):>12}"
            )
            continue
        each, tot = r["per_sandbox_kib"], r["pss_kib"]
        procs = ", ".join(f"{c} {k}" for k, c in sorted(r["processes"].items()))
        s = (
            f"  {r['variant']:<10} {r['system']:<18} {_num(None if each is None else each / 1024, '.2f'):>9} "
            f"{_num(None if tot is None else tot / 1024, '.1f'):>10} {_num(r['rm_s'], '.2f'):>12} "
            f"{_num(r['start_s'], '.2f'):>12}  {procs}"
        )
        if r["failed"]:
            s += f"  ({r['failed']}/{r['rounds']} rounds FAILED: {'; '.join(r['errors'])})"
        lines.append(s)
    if result.get("docker_skipped"):
        lines.append(f"Docker not measured: {result['docker_skipped']}")
    return "\n".join(lines)
