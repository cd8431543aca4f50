"""Aggregation, the terminal table, ratios, plot and HTML, built from recorded tool output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from portwright.bench import html, iperf3, plot, report, wrk

DATA = Path(__file__).parent / "data"


def _bulk(mech: str, rnd: int, gbit: float | None, busy: float, error: str | None = None) -> dict[str, Any]:
    ok = gbit is not None
    return {
        "mechanism": mech,
        "scenario": "bulk-in",
        "placement": "local",
        "unit": "Gbit/s",
        "round": rnd,
        "ok": ok,
        "error": error,
        "value": gbit,
        "cpu": {"ncpu": 4, "busy": busy},
        "efficiency": gbit / (busy * 4) if ok and gbit else None,
        "tool": {},
    }


def _article_samples() -> list[dict[str, Any]]:
    # The article's three runs as one round each, plus a failed proxy run.
    return [
        _bulk("host", 1, 70.0, 0.51),
        _bulk("docker-proxy", 1, 42.0, 0.86),
        _bulk("docker-iptables", 1, 54.0, 0.51),
        _bulk("proxy", 1, None, 0.9, error="iperf3: unable to connect to server: Connection refused"),
    ]


def test_aggregate_reproduces_article_ratios() -> None:
    rows = report.aggregate(_article_samples())
    by = {r["mechanism"]: r for r in rows}
    assert by["host"]["ratio_vs_host"]["median"] == pytest.approx(1.0)
    assert 1 / by["docker-proxy"]["ratio_vs_host"]["median"] == pytest.approx(2.8, abs=0.05)
    assert 1 / by["docker-iptables"]["ratio_vs_host"]["median"] == pytest.approx(1.3, abs=0.02)
    assert by["docker-proxy"]["article"]["gbit_per_s"] == 42.0
    assert by["proxy"]["value"]["median"] is None and by["proxy"]["value"]["failed"] == 1


def test_table_lines_up_with_article_and_never_prints_a_number_for_failures() -> None:
    rows = report.aggregate(_article_samples())
    text = report.table(rows, {"docker-proxy": "x not found; install it with: apt-get install docker.io"})
    lines = text.splitlines()
    head = next(ln for ln in lines if "mechanism" in ln)
    assert "article" in head and "vs host" in head
    proxy = next(ln for ln in lines if ln.strip().startswith("proxy"))
    assert "FAILED (1/1 runs)" in proxy and "Connection refused" in proxy
    assert not any(ch.isdigit() for ch in proxy.split("FAILED")[0])
    dp = next(ln for ln in lines if ln.strip().startswith("docker-proxy"))
    assert "42" in dp.split("|")[1] and "0.36" in dp.split("|")[1]
    assert "skipped docker-proxy" in text and "apt-get install docker.io" in text


def test_median_over_rounds_and_spread() -> None:
    s = [_bulk("host", r, v, 0.5) for r, v in ((1, 10.0), (2, 12.0), (3, 11.0))]
    s += [_bulk("nat", r, v, 0.5) for r, v in ((1, 5.0), (2, 6.0), (3, None))]
    rows = {r["mechanism"]: r for r in report.aggregate(s)}
    assert rows["host"]["value"]["median"] == 11.0
    assert rows["host"]["value"]["spread"] == pytest.approx(2 / 11)
    assert rows["nat"]["value"]["failed"] == 1
    # paired per round: 5/10 and 6/12 -> 0.5
    assert rows["nat"]["ratio_vs_host"]["median"] == pytest.approx(0.5)
    head = report.headline(list(rows.values()))
    nat_host = next(h for h in head if (h["a"], h["b"]) == ("nat", "host"))
    assert nat_host["ratio"] == pytest.approx(
        rows["nat"]["efficiency"]["median"] / rows["host"]["efficiency"]["median"]
    )
    paired = next(h for h in report.headline(list(rows.values()), s) if (h["a"], h["b"]) == ("nat", "host"))
    assert paired["ratio"] == pytest.approx(0.5) and paired["rounds"] == 2
    assert "nat vs host" in report.headline_text([paired]) and "[0.50-0.50]" in report.headline_text([paired])


def _recorded_run() -> dict[str, Any]:
    ing = iperf3.parse((DATA / "iperf3_p10_ingress.json").read_text())
    close = wrk.parse((DATA / "wrk_close.txt").read_text())
    ka = wrk.parse((DATA / "wrk_keepalive.txt").read_text())
    bad = wrk.parse((DATA / "wrk_refused.txt").read_text(), 1)
    samples: list[dict[str, Any]] = []
    for m in ("host", "nat"):
        samples.append(
            {
                "mechanism": m,
                "scenario": "bulk-in",
                "placement": "local",
                "unit": "Gbit/s",
                "round": 1,
                "ok": True,
                "error": None,
                "value": ing.gbit_per_second,
                "cpu": {"ncpu": 2, "busy": 0.9},
                "efficiency": (ing.gbit_per_second or 0) / 1.8,
                "tool": ing.to_json(),
            }
        )
        for sc, r in (("conn", close if m == "host" else bad), ("rr", ka)):
            samples.append(
                {
                    "mechanism": m,
                    "scenario": sc,
                    "placement": "local",
                    "unit": "req/s",
                    "round": 1,
                    "ok": r.ok,
                    "error": r.error,
                    "value": r.requests_per_second,
                    "cpu": {"ncpu": 2, "busy": 0.95},
                    "efficiency": None if not r.ok else (r.requests_per_second or 0) / 1.9,
                    "tool": r.to_json(),
                    "publisher": {"cpu_fraction": 0.1, "pss_kib": 2048},
                }
            )
    return {"started": 0.0, "finished": 1.0, "samples": samples, "mechanisms": ["host", "nat"], "skipped": {}}


def _doc() -> dict[str, Any]:
    machine = {"cpus": 2, "cpu_model": "test", "kernel": "6.x", "os": "Debian 12", "mem_mib": 1}
    config = {"rounds": 1, "duration_s": 1.0, "iperf3_streams": 10, "wrk_connections": 32, "wrk_threads": 2}
    return report.document(machine, config, _recorded_run())


def test_document_keeps_every_raw_sample() -> None:
    doc = _doc()
    assert doc["schema"] == report.SCHEMA
    assert len(doc["samples"]) == 6
    conn = {r["mechanism"]: r for r in doc["summary"] if r["scenario"] == "conn"}
    assert conn["host"]["latency_us"]["p50"] == 385
    assert conn["nat"]["value"]["median"] is None
    assert "Connection refused" in conn["nat"]["errors"][0]
    text = report.table(doc["summary"])
    assert "p50 ms" in text and "0.39" in text  # 385 us


@pytest.mark.parametrize("fmt,magic", [("png", b"\x89PNG"), ("svg", b"<?xml")])
def test_plot_renders(fmt: str, magic: bytes, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    doc = _doc()
    data = plot.render(doc["summary"], fmt, "test")
    assert data.startswith(magic)
    if fmt == "svg":
        assert b"failed" in data  # the failed conn run is labelled, not drawn as zero
    path = tmp_path / f"x.{fmt}"
    plot.write(str(path), doc["summary"])
    assert path.stat().st_size > 1000


def test_plot_rejects_other_extensions(tmp_path: Path) -> None:
    from portwright.errors import BadInput

    with pytest.raises(BadInput, match=r"\.png or \.svg"):
        plot.write(str(tmp_path / "x.jpg"), _doc()["summary"])


def test_html_has_chart_and_table() -> None:
    pytest.importorskip("matplotlib")
    page = html.render(_doc())
    assert page.startswith("<!doctype html>")
    assert "<svg" in page and "mechanism" in page and "FAILED" in page
