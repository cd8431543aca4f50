"""The resolver's own measurements (dns/stats.py) and how bench --dns sums them (pure)."""

from __future__ import annotations

import gc

from portwright.bench.resolver import run_cost_text, summary
from portwright.dns.stats import RING, Stats


def test_service_time_percentiles_and_reset() -> None:
    st = Stats()
    for us in range(1, 1001):  # 1..1000 us
        st.query(us * 1000)
    snap = st.snapshot()
    assert snap["queries"] == 1000
    assert snap["service_us"]["p50"] == 501.0
    assert snap["service_us"]["p99"] == 991.0
    assert snap["service_us"]["max"] == 1000.0
    st.reset()
    assert st.snapshot()["queries"] == 0 and st.snapshot()["service_us"]["p99"] == 0.0


def test_the_ring_keeps_only_the_last_samples() -> None:
    st = Stats()
    for _ in range(RING):
        st.query(5_000_000)  # 5 ms: old, slow
    for _ in range(RING):
        st.query(10_000)  # 10 us: the recent ones
    snap = st.snapshot()
    assert snap["queries"] == 2 * RING
    assert snap["service_us"]["max"] == 10.0


def test_collector_passes_are_counted_through_gc_callbacks() -> None:
    st = Stats()
    st.install()
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(st.on_gc)
    snap = st.snapshot()
    assert snap["gc_passes"][2] >= 1
    assert snap["gc_ms_max"] > 0


def test_rebuilds_are_counted() -> None:
    st = Stats()
    st.rebuilt(2_000_000)
    st.rebuilt(4_000_000)
    snap = st.snapshot()
    assert (snap["rebuilds"], snap["rebuild_ms_total"], snap["rebuild_ms_max"]) == (2, 6.0, 4.0)


def _round(p99_ms: float, server_p99_us: float, gc_max: float) -> dict[str, object]:
    lat = {"p50": 0.1, "p99": p99_ms, "p999": 2 * p99_ms, "max": 9.0, "lost": 0, "bad": 0}
    server = {
        "service_us": {"p50": 20.0, "p99": server_p99_us, "p999": 80.0},
        "gc_ms_max": gc_max,
        "gc_passes": [3, 1, 0],
        "rebuilds": 0,
    }
    qps = {"answered_per_s": 9000.0, "per_cpu_s": 20000.0, "resolver_cpu_s": 2.0, "lost": 0, "bad": 0}
    return {"dns": lat, "echo": dict(lat, p50=0.05), "qps": qps, "server": server}


def test_summary_takes_medians_and_the_worst_pause() -> None:
    s = summary([_round(1.0, 30.0, 0.2), _round(3.0, 50.0, 1.5), _round(2.0, 40.0, 0.1)])
    assert s["dns_p99"] == 2.0 and s["server_p99_us"] == 40.0
    assert s["server_gc_ms_max"] == 1.5 and s["server_gc_passes"] == 12
    assert s["dns_over_echo_p50"] == 2.0


def test_run_cost_compares_the_first_and_last_tenth() -> None:
    seconds = [1.0] * 10 + [5.0] * 80 + [2.0] * 10
    out = run_cost_text(seconds)
    assert "1.00 s (median of the first 10)" in out and "2.00 s (median of the last 10)" in out
    assert "median of the first 1)" in run_cost_text([3.0]) and run_cost_text([]) == "no runs"
