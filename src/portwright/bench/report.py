"""From raw samples to results: aggregation, the terminal table, the headline ratios, JSON.

Pure: takes the sample dicts scenarios.py records and returns data and text. The terminal table
lines up with the seed article's (throughput, idle, efficiency relative to host networking) and
shows the article's own figures beside ours for reference. A mechanism whose runs all failed is
printed as FAILED with the reason; a median is only ever taken over successful runs, and the
number of failed runs is always shown.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from typing import Any

from .stats import ARTICLE, Summary, article_ratio_vs_host, ratio, summarize

SCHEMA = "portwright-bench/1"
ORDER = ("host", "host-remap", "direct", "nat", "proxy", "docker-proxy", "docker-iptables", "proxy-dropin")
SCENARIO_ORDER = ("bulk-in", "bulk-out", "bulk-udp", "conn", "rr")
TITLES = {
    "bulk-in": "bulk TCP, client -> server (iperf3; the article's ingress test)",
    "bulk-out": "bulk TCP, server -> client (iperf3 -R; egress)",
    "bulk-udp": "UDP, client -> server (iperf3 -u -b 0 -l 1400; Gbit/s that arrived)",
    "conn": "short connections (wrk, Connection: close, nginx in the sandbox)",
    "rr": "request/response on keep-alive connections (wrk, nginx in the sandbox)",
}


def _f(x: Any) -> float | None:
    return None if x is None else float(x)


def aggregate(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (placement, scenario, mechanism): medians, spread, efficiency, ratio to host."""
    keys: list[tuple[str, str, str]] = []
    for s in samples:
        k = (s["placement"], s["scenario"], s["mechanism"])
        if k not in keys:
            keys.append(k)
    keys.sort(key=lambda k: (k[0], _idx(SCENARIO_ORDER, k[1]), _idx(ORDER, k[2])))
    rows: list[dict[str, Any]] = []
    for placement, scenario, mech in keys:
        mine = [
            s
            for s in samples
            if (s["placement"], s["scenario"], s["mechanism"]) == (placement, scenario, mech)
        ]
        host = {
            s.get("round"): s
            for s in samples
            if (s["placement"], s["scenario"], s["mechanism"]) == (placement, scenario, "host")
        }
        ok = [s for s in mine if s.get("ok")]
        paired = [
            ratio(_f(s.get("efficiency")), _f(host[s.get("round")].get("efficiency")))
            for s in ok
            if s.get("round") in host and host[s.get("round")].get("ok")
        ]
        pub = [
            s["publisher"]
            for s in ok
            if isinstance(s.get("publisher"), dict) and s["publisher"].get("cpu_fraction") is not None
        ]
        lat = [s["tool"].get("latency_us", {}) for s in ok if isinstance(s.get("tool"), dict)]
        row: dict[str, Any] = {
            "placement": placement,
            "scenario": scenario,
            "mechanism": mech,
            "unit": mine[0].get("unit"),
            "value": summarize(_f(s.get("value")) if s.get("ok") else None for s in mine).to_json(),
            "busy": summarize(
                _f((s.get("cpu") or {}).get("busy")) if s.get("ok") else None for s in mine
            ).to_json(),
            "efficiency": summarize(_f(s.get("efficiency")) if s.get("ok") else None for s in mine).to_json(),
            "ratio_vs_host": summarize(paired).to_json() if paired else None,
            "errors": sorted({str(s.get("error")) for s in mine if not s.get("ok")}),
            "ncpu": next(((s.get("cpu") or {}).get("ncpu") for s in ok), None),
        }
        if pub:
            row["publisher"] = {
                "cpu_fraction": statistics.median(float(p["cpu_fraction"]) for p in pub),
                "pss_kib": max(int(p["pss_kib"]) for p in pub),
            }
        if lat and all("p50" in x for x in lat):
            row["latency_us"] = {
                q: statistics.median(float(x[q]) for x in lat) for q in ("p50", "p90", "p99")
            }
        art = ARTICLE.get(mech)
        if art is not None and scenario == "bulk-in":
            row["article"] = {
                "gbit_per_s": art.gbit,
                "idle": art.idle,
                "ratio_vs_host": article_ratio_vs_host(mech),
            }
        rows.append(row)
    return rows


def _idx(order: Iterable[str], x: str) -> int:
    lst = list(order)
    return lst.index(x) if x in lst else len(lst)


def _find(rows: list[dict[str, Any]], placement: str, scenario: str, mech: str) -> dict[str, Any] | None:
    for r in rows:
        if (r["placement"], r["scenario"], r["mechanism"]) == (placement, scenario, mech):
            return r
    return None


def _med(row: dict[str, Any] | None, key: str) -> float | None:
    if row is None or not row.get(key):
        return None
    return _f(row[key].get("median"))


def headline(rows: list[dict[str, Any]], samples: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The closing note's ratios: nat vs host, proxy vs docker-proxy, nat vs Docker's iptables,
    and the connection rates, per placement. Bulk compares efficiency, HTTP compares requests/s.
    With ``samples``, the ratio is the median of per-round ratios (the runs of one round are
    minutes apart at most); without, the ratio of the medians."""
    out: list[dict[str, Any]] = []
    placements = sorted({r["placement"] for r in rows})
    pairs = (
        ("host-remap", "host"),
        ("nat", "host"),
        ("proxy", "docker-proxy"),
        ("nat", "docker-iptables"),
        ("proxy", "host"),
        ("docker-proxy", "host"),
        ("docker-iptables", "host"),
        ("proxy-dropin", "docker-proxy"),
    )
    for placement in placements:
        for scenario in SCENARIO_ORDER:
            key = "efficiency" if scenario.startswith("bulk") else "value"
            for a, b in pairs:
                ra, rb = _find(rows, placement, scenario, a), _find(rows, placement, scenario, b)
                if ra is None or rb is None:
                    continue
                item: dict[str, Any] = {
                    "placement": placement,
                    "scenario": scenario,
                    "a": a,
                    "b": b,
                    "measure": key,
                }
                if samples is None:
                    item["ratio"] = ratio(_med(ra, key), _med(rb, key))
                else:
                    xa = _by_round(samples, placement, scenario, a, key)
                    xb = _by_round(samples, placement, scenario, b, key)
                    per = [ratio(xa[k], xb[k]) for k in xa if k in xb]
                    summ = summarize(per)
                    item["ratio"] = summ.median
                    item["rounds"] = len([x for x in per if x is not None])
                    item["min"], item["max"] = summ.low, summ.high
                out.append(item)
    return out


def _by_round(
    samples: list[dict[str, Any]], placement: str, scenario: str, mech: str, key: str
) -> dict[Any, float]:
    return {
        s.get("round"): float(s[key])
        for s in samples
        if (s["placement"], s["scenario"], s["mechanism"]) == (placement, scenario, mech)
        and s.get("ok")
        and s.get(key) is not None
    }


# ---- text ----------------------------------------------------------------------------------


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def header_lines(machine: dict[str, Any], config: dict[str, Any], started: float | None = None) -> list[str]:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started or time.time()))
    return [
        f"portwright bench · {when} · {machine.get('cpus')} CPUs ({machine.get('cpu_model') or 'unknown CPU'})"
        f" · kernel {machine.get('kernel')} · {machine.get('os') or 'Linux'} · {machine.get('mem_mib')} MiB",
        f"{config.get('rounds')} rounds, mechanisms interleaved, {config.get('duration_s'):g} s per run; "
        f"iperf3 -P {config.get('iperf3_streams')}; wrk -c {config.get('wrk_connections')} "
        f"-t {config.get('wrk_threads')}. Medians; spread = (max-min)/median over rounds.",
        "busy = 1 - idle - iowait over all CPUs (from /proc/stat, as mpstat); efficiency = "
        "throughput per busy CPU; 'vs host' = efficiency / host networking's, paired per round.",
    ]


def table(rows: list[dict[str, Any]], skipped: dict[str, str] | None = None) -> str:
    lines: list[str] = []
    for placement in sorted({r["placement"] for r in rows}, key=lambda p: (p != "local", p)):
        for scenario in SCENARIO_ORDER:
            sect = [r for r in rows if r["placement"] == placement and r["scenario"] == scenario]
            if not sect:
                continue
            bulk = scenario.startswith("bulk")
            lines.append("")
            lines.append(f"{TITLES[scenario]} · {placement} client")
            unit = "Gbit/s" if bulk else "req/s"
            eff_unit = "Gb/s/CPU" if bulk else "req/s/CPU"
            head = (
                f"  {'mechanism':<16}{unit:>9} {'spread':>7} {'idle':>5} {'busy CPU':>9} "
                f"{eff_unit:>10} {'vs host':>8}"
            )
            if not bulk:
                head += f" {'p50 ms':>7} {'p99 ms':>7}"
            head += f" {'pub CPU':>8} {'pub PSS':>8}"
            art = bulk and scenario == "bulk-in" and placement == "local"
            if art:
                head += "  | article: Gbit/s idle vs host"
            lines.append(head)
            for r in sect:
                lines.append(_row(r, bulk, art))
            for r in sect:
                if r["value"]["failed"] and r["value"]["median"] is not None:
                    lines.append(
                        f"  ! {r['mechanism']}: {r['value']['failed']}/{r['value']['n']} runs failed: "
                        + "; ".join(r["errors"])
                    )
    if skipped:
        lines.append("")
        for m, why in skipped.items():
            lines.append(f"skipped {m}: {why}")
    return "\n".join(lines).lstrip("\n")


def _row(r: dict[str, Any], bulk: bool, art: bool) -> str:
    v = r["value"]
    name = r["mechanism"]
    if v["median"] is None:
        why = r["errors"][0] if r["errors"] else "no result"
        return f"  {name:<16}FAILED ({v['failed']}/{v['n']} runs): {why}"
    ncpu = r.get("ncpu") or 1
    busy_frac = r["busy"]["median"]
    busy_cpu = None if busy_frac is None else busy_frac * ncpu
    idle = None if busy_frac is None else 1 - busy_frac
    val = _num(v["median"], ".1f" if bulk else ",.0f")
    eff = _num(r["efficiency"]["median"], ".2f" if bulk else ",.0f")
    rh = r.get("ratio_vs_host") or {}
    s = (
        f"  {name:<16}{val:>9} {_pct(Summary(v['n'], v['failed'], v['median'], v['min'], v['max']).spread):>7} "
        f"{_pct(idle):>5} {_num(busy_cpu, '.2f'):>9} {eff:>10} {_num(rh.get('median'), '.2f'):>8}"
    )
    if not bulk:
        lat = r.get("latency_us") or {}
        p50, p99 = lat.get("p50"), lat.get("p99")
        s += f" {_num(None if p50 is None else p50 / 1000, '.2f'):>7} {_num(None if p99 is None else p99 / 1000, '.2f'):>7}"
    pub = r.get("publisher")
    if pub:
        s += f" {_pct(pub['cpu_fraction']):>8} {pub['pss_kib'] / 1024:>7.1f}M"
    else:
        s += f" {'-':>8} {'-':>8}"
    if v["failed"]:
        s += f"  ({v['failed']}/{v['n']} runs FAILED)"
    a = r.get("article")
    if art and a:
        s += f"  | {a['gbit_per_s']:>14.0f} {100 * a['idle']:>3.0f}% {a['ratio_vs_host']:>7.2f}"
    return s


def headline_text(items: list[dict[str, Any]]) -> str:
    lines = [
        "Ratios, median of per-round ratios [min-max] (bulk: efficiency, i.e. throughput per busy "
        "CPU; HTTP: requests/s):"
    ]
    for h in items:
        if h["a"] in ("docker-proxy", "docker-iptables") and h["b"] == "host":
            continue
        rng = ""
        if h.get("min") is not None and h.get("max") is not None and h.get("rounds", 0) > 1:
            rng = f"  [{h['min']:.2f}-{h['max']:.2f}]"
        lines.append(
            f"  {h['placement']:<8} {h['scenario']:<8} {h['a']:>12} vs {h['b']:<16} "
            f"{_num(h['ratio'], '.2f')}{rng}"
        )
    return "\n".join(lines)


def document(machine: dict[str, Any], config: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The --json document: every raw sample plus the aggregates and ratios derived from them."""
    rows = aggregate(run["samples"])
    return {
        "schema": SCHEMA,
        "machine": machine,
        "config": config,
        "started": run.get("started"),
        "finished": run.get("finished"),
        "mechanisms": run.get("mechanisms"),
        "order": run.get("order", {}),  # round -> mechanisms in the order they ran
        "skipped": run.get("skipped", {}),
        "summary": rows,
        "headline": headline(rows, run["samples"]),
        "samples": run["samples"],
        "article": {
            k: {
                "label": a.label,
                "gbit_per_s": a.gbit,
                "idle": a.idle,
                "ratio_vs_host": article_ratio_vs_host(k),
            }
            for k, a in ARTICLE.items()
        },
    }
