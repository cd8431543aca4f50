"""The efficiency arithmetic, checked against the seed article's own numbers."""

from __future__ import annotations

import pytest

from portwright.bench import stats


def test_article_host_vs_docker_proxy_is_about_2_8() -> None:
    host = stats.efficiency(70, 0.51)
    proxy = stats.efficiency(42, 0.86)
    r = stats.ratio(host, proxy)
    assert r == pytest.approx(2.8, abs=0.05)
    assert 1 / stats.article_ratio_vs_host("docker-proxy") == pytest.approx(r, rel=0.02)  # type: ignore[operator]


def test_article_host_vs_iptables_is_about_1_3() -> None:
    r = stats.ratio(stats.efficiency(70, 0.51), stats.efficiency(54, 0.51))
    assert r == pytest.approx(1.3, abs=0.02)


def test_efficiency_per_busy_cpu_and_missing_inputs() -> None:
    assert stats.efficiency(20.0, 0.5, ncpu=2) == pytest.approx(20.0)
    assert stats.efficiency(None, 0.5) is None
    assert stats.efficiency(10.0, 0.0) is None
    assert stats.efficiency(10.0, None) is None
    assert stats.ratio(1.0, None) is None and stats.ratio(1.0, 0.0) is None


def test_summary_median_and_spread_ignore_failed_runs() -> None:
    s = stats.summarize([10.0, None, 12.0, 11.0])
    assert (s.n, s.failed, s.median, s.low, s.high) == (4, 1, 11.0, 10.0, 12.0)
    assert s.spread == pytest.approx(2 / 11)
    none = stats.summarize([None, None])
    assert none.median is None and none.spread is None and none.failed == 2
