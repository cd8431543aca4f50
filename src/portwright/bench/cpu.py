"""CPU and memory accounting for benchmark windows, read from /proc the way mpstat does.

Owns: parsing ``/proc/stat`` into per-CPU jiffy counters, turning two snapshots into the
fractions mpstat prints (user, nice, system, irq, softirq, steal, iowait, idle), and the
per-process costs of a publisher (CPU seconds from ``/proc/PID/stat``, PSS from
``/proc/PID/smaps_rollup``) summed over the process and its descendants. The parsers are pure
so they can be tested on recorded files; the ``read_*`` helpers are the only I/O.

"Busy" is everything except idle and iowait, which matches the article's reading of mpstat:
efficiency there is throughput divided by (1 - %idle).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# /proc/stat columns, in kernel order. guest/guest_nice are already included in user/nice,
# so they are parsed but never added again (mpstat does the same).
_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Cumulative jiffies of one CPU line of /proc/stat."""

    user: int
    nice: int
    system: int
    idle: int
    iowait: int
    irq: int
    softirq: int
    steal: int

    @property
    def total(self) -> int:
        return (
            self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
        )


@dataclass(frozen=True, slots=True)
class CpuUsage:
    """Fractions (0..1) of one CPU (or of all, for ``cpu == "all"``) over a window."""

    cpu: str
    user: float
    nice: float
    system: float
    irq: float
    softirq: float
    steal: float
    iowait: float
    idle: float

    @property
    def busy(self) -> float:
        return max(0.0, 1.0 - self.idle - self.iowait)

    def to_json(self) -> dict[str, float | str]:
        return {
            "cpu": self.cpu,
            "user": self.user,
            "nice": self.nice,
            "system": self.system,
            "irq": self.irq,
            "softirq": self.softirq,
            "steal": self.steal,
            "iowait": self.iowait,
            "idle": self.idle,
            "busy": self.busy,
        }


def parse_proc_stat(text: str) -> dict[str, CpuTimes]:
    """``cpu``/``cpuN`` lines of /proc/stat -> {"all": ..., "0": ..., "1": ...}."""
    out: dict[str, CpuTimes] = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        parts = line.split()
        name = parts[0][3:] or "all"
        nums = [int(x) for x in parts[1:]] + [0] * len(_STAT_FIELDS)
        vals = dict(zip(_STAT_FIELDS, nums, strict=False))
        out[name] = CpuTimes(
            user=vals["user"],
            nice=vals["nice"],
            system=vals["system"],
            idle=vals["idle"],
            iowait=vals["iowait"],
            irq=vals["irq"],
            softirq=vals["softirq"],
            steal=vals["steal"],
        )
    if "all" not in out:
        raise ValueError("no aggregate 'cpu' line in /proc/stat text")
    return out


def usage(before: dict[str, CpuTimes], after: dict[str, CpuTimes]) -> dict[str, CpuUsage]:
    """Per-CPU fractions between two snapshots. CPUs with no elapsed jiffies are left out."""
    out: dict[str, CpuUsage] = {}
    for name, b in before.items():
        a = after.get(name)
        if a is None:
            continue
        total = a.total - b.total
        if total <= 0:
            continue

        def frac(field: str, a: CpuTimes = a, b: CpuTimes = b, total: int = total) -> float:
            delta: int = getattr(a, field) - getattr(b, field)
            return max(0, delta) / total

        out[name] = CpuUsage(
            cpu=name,
            user=frac("user"),
            nice=frac("nice"),
            system=frac("system"),
            irq=frac("irq"),
            softirq=frac("softirq"),
            steal=frac("steal"),
            iowait=frac("iowait"),
            idle=frac("idle"),
        )
    return out


def read_proc_stat() -> dict[str, CpuTimes]:
    with open("/proc/stat", encoding="ascii") as f:
        return parse_proc_stat(f.read())


def cpu_count(snapshot: dict[str, CpuTimes]) -> int:
    return sum(1 for k in snapshot if k != "all")


# ---- per-process costs ---------------------------------------------------------------------


def parse_pid_stat(text: str) -> tuple[int, int]:
    """/proc/PID/stat -> (utime, stime) in clock ticks. Threads are included by the kernel."""
    # The command name (field 2) may contain spaces and parentheses; split after the last ')'.
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); utime is field 14, stime field 15.
    return int(rest[11]), int(rest[12])


def parse_smaps_rollup_pss_kib(text: str) -> int:
    """The ``Pss:`` line of /proc/PID/smaps_rollup, in KiB."""
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise ValueError("no Pss: line in smaps_rollup text")


def descendants(pid: int) -> list[int]:
    """``pid`` and every live descendant (via /proc/PID/task/*/children)."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children", encoding="ascii") as f:
                    todo.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    return seen


@dataclass(frozen=True, slots=True)
class ProcCost:
    """CPU seconds (user+system, all threads) and PSS of a process tree at one moment."""

    pids: tuple[int, ...]
    cpu_seconds: float
    pss_kib: int


def read_proc_cost(pids: list[int], exclude: list[int] | None = None) -> ProcCost | None:
    """Sum CPU time and PSS over ``pids`` and their descendants, leaving out the trees rooted
    at ``exclude`` (a sandbox's own command is a child of its supervisor but not a publisher).
    None if no process is alive."""
    skip: set[int] = set()
    for x in exclude or []:
        skip.update(descendants(x))
    every: list[int] = []
    for p in pids:
        for d in descendants(p):
            if d not in every and d not in skip:
                every.append(d)
    ticks = 0
    pss = 0
    alive: list[int] = []
    for p in every:
        try:
            with open(f"/proc/{p}/stat", encoding="ascii", errors="replace") as f:
                u, s = parse_pid_stat(f.read())
            with open(f"/proc/{p}/smaps_rollup", encoding="ascii") as f:
                pss += parse_smaps_rollup_pss_kib(f.read())
        except (OSError, ValueError):
            continue
        ticks += u + s
        alive.append(p)
    if not alive:
        return None
    return ProcCost(pids=tuple(alive), cpu_seconds=ticks / CLOCK_TICKS, pss_kib=pss)
