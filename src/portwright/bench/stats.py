"""The bench's arithmetic: medians and spread over rounds, efficiency, ratios to host networking.

Pure. "Efficiency" is the article's "adjusting for CPU load": throughput divided by the CPU it
kept busy. We express it per busy CPU (throughput / (busy fraction x CPUs)); the ratio between two
mechanisms is the same whichever way it is normalised, and it is that ratio the article quotes
(host networking ~2.8x docker-proxy, ~1.3x iptables NAT).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Summary:
    """Median and spread of the successful samples; ``failed`` counts the runs that failed."""

    n: int
    failed: int
    median: float | None
    low: float | None
    high: float | None

    @property
    def spread(self) -> float | None:
        """(max - min) / median: 0.1 means the rounds disagreed by 10% of the median."""
        if self.median is None or self.low is None or self.high is None or self.median == 0:
            return None
        return (self.high - self.low) / self.median

    def to_json(self) -> dict[str, object]:
        return {
            "n": self.n,
            "failed": self.failed,
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "spread": self.spread,
        }


def summarize(values: Iterable[float | None]) -> Summary:
    vals = list(values)
    good = [v for v in vals if v is not None]
    failed = len(vals) - len(good)
    if not good:
        return Summary(n=len(vals), failed=failed, median=None, low=None, high=None)
    return Summary(n=len(vals), failed=failed, median=statistics.median(good), low=min(good), high=max(good))


def efficiency(throughput: float | None, busy_fraction: float | None, ncpu: int = 1) -> float | None:
    """Throughput per busy CPU. None when either input is missing or no CPU was busy."""
    if throughput is None or busy_fraction is None or busy_fraction <= 0 or ncpu <= 0:
        return None
    return throughput / (busy_fraction * ncpu)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


@dataclass(frozen=True, slots=True)
class ArticleRow:
    """One line of the seed article's results (4-CPU laptop, iperf3 -P 10 -t 60, ingress)."""

    label: str
    gbit: float
    idle: float  # fraction, from mpstat's 'all' line

    @property
    def busy(self) -> float:
        return 1.0 - self.idle

    @property
    def efficiency(self) -> float:
        return self.gbit / self.busy


# The article's own figures, shown beside ours for reference. Keyed by our mechanism names.
ARTICLE: dict[str, ArticleRow] = {
    "docker-proxy": ArticleRow("plain -p (docker-proxy)", 42.0, 0.14),
    "docker-iptables": ArticleRow("fast -p (userland-proxy: false)", 54.0, 0.49),
    "host": ArticleRow("host networking", 70.0, 0.49),
}


def article_ratio_vs_host(mechanism: str) -> float | None:
    """The article's efficiency of ``mechanism`` relative to host networking (<= 1)."""
    row = ARTICLE.get(mechanism)
    if row is None:
        return None
    return row.efficiency / ARTICLE["host"].efficiency
