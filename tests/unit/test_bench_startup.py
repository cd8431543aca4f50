"""bench.startup's arithmetic: medians of each mechanism and of the paired per-round differences."""

from __future__ import annotations

import pytest

from portwright.bench.startup import summarize


def test_the_added_time_is_the_median_of_paired_differences() -> None:
    s = summarize([(1.0, 1.02), (2.0, 2.01), (1.5, 1.6)])
    assert s["host_ms"] == pytest.approx(1500)
    assert s["host_remap_ms"] == pytest.approx(1600)
    assert s["added_ms"] == pytest.approx(20)  # not 1600 - 1500: pairs, not medians
    assert (s["added_min_ms"], s["added_max_ms"]) == (pytest.approx(10), pytest.approx(100))
