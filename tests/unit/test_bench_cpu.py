"""CPU accounting from recorded /proc files (tests/unit/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from portwright.bench import cpu

DATA = Path(__file__).parent / "data"


def test_parse_proc_stat_recorded() -> None:
    snap = cpu.parse_proc_stat((DATA / "proc_stat_a.txt").read_text())
    assert set(snap) == {"all", "0", "1"}
    assert cpu.cpu_count(snap) == 2
    a = snap["all"]
    assert (a.user, a.nice, a.system, a.idle, a.iowait, a.irq, a.softirq, a.steal) == (
        3019,
        0,
        2032,
        59323,
        340,
        0,
        471,
        8,
    )


def test_usage_between_recorded_snapshots() -> None:
    before = cpu.parse_proc_stat((DATA / "proc_stat_a.txt").read_text())
    after = cpu.parse_proc_stat((DATA / "proc_stat_b.txt").read_text())
    use = cpu.usage(before, after)
    u = use["all"]
    # all: user +6, system +4, idle +189, softirq +1 -> 200 jiffies
    assert u.user == pytest.approx(6 / 200)
    assert u.system == pytest.approx(4 / 200)
    assert u.softirq == pytest.approx(1 / 200)
    assert u.idle == pytest.approx(189 / 200)
    assert u.busy == pytest.approx(11 / 200)
    total = u.user + u.nice + u.system + u.irq + u.softirq + u.steal + u.iowait + u.idle
    assert total == pytest.approx(1.0)
    assert use["0"].idle == pytest.approx(96 / 100)


def test_busy_excludes_iowait_like_the_article() -> None:
    # The article's 'all' line for docker-proxy: %iowait 0.26, %idle 14.07 -> busy 0.8567.
    b = cpu.CpuTimes(user=563, nice=0, system=6317, idle=0, iowait=0, irq=0, softirq=1688, steal=0)
    a = cpu.CpuTimes(
        user=563 * 2, nice=0, system=6317 * 2, idle=1407, iowait=26, irq=0, softirq=1688 * 2, steal=0
    )
    u = cpu.usage({"all": b}, {"all": a})["all"]
    assert u.busy == pytest.approx(1 - (1407 + 26) / (563 + 6317 + 1688 + 1407 + 26))


def test_no_aggregate_line_is_an_error() -> None:
    with pytest.raises(ValueError):
        cpu.parse_proc_stat("intr 1 2 3\n")


def test_parse_pid_stat_with_awkward_name() -> None:
    text = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 99 0 0"
    assert cpu.parse_pid_stat(text) == (250, 75)


def test_parse_smaps_rollup() -> None:
    text = "55853d166000-7fffa761d000 ---p 00000000 00:00 0   [rollup]\nRss:   1728 kB\nPss:    371 kB\n"
    assert cpu.parse_smaps_rollup_pss_kib(text) == 371
    with pytest.raises(ValueError):
        cpu.parse_smaps_rollup_pss_kib("Rss: 1 kB\n")


def test_read_proc_cost_of_self() -> None:
    import os

    cost = cpu.read_proc_cost([os.getpid()])
    assert cost is not None
    assert os.getpid() in cost.pids
    assert cost.pss_kib > 0
    assert cost.cpu_seconds > 0
