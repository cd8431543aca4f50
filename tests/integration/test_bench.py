"""`portwright bench` end to end: a 1-second, 1-round run, checked for structure and plausibility.

No speed is asserted; the checks are that every mechanism ran (or was skipped with the package
that brings it), numbers are positive where a run succeeded, a failed run carries a reason and no
number, the chart was written, and nothing the bench created is left behind, also after SIGINT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.integration.conftest import need, sh

PW = os.path.join(os.path.dirname(sys.executable), "portwright")
MECHS = ["host", "direct", "nat", "proxy", "docker-proxy", "docker-iptables"]


def _leftovers() -> list[str]:
    left = [ln for ln in sh("ip", "netns", "list").stdout.splitlines() if ln.startswith("pwb")]
    left += [ln for ln in sh("ip", "-br", "link").stdout.splitlines() if ln.startswith("pwb")]
    left += [ln for ln in sh("iptables-save", check=False).stdout.splitlines() if "PWB-" in ln]
    return left


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool, pkg in (("iperf3", "iperf3"), ("wrk", "wrk"), ("nginx", "nginx-light")):
        need(tool, pkg)


def test_bench_one_second_one_round(tmp_path: Path) -> None:
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    before = set(_leftovers())
    p = subprocess.run([PW, "bench", "--duration", "1", "--rounds", "1", "--scenarios", "bulk-in,rr",
                        "--json", str(out), "--plot", str(png), "--quiet"],
                       capture_output=True, text=True, timeout=240, cwd="/")
    assert p.returncode in (0, 1), p.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "portwright-bench/1"
    assert doc["machine"]["cpus"] >= 1 and doc["machine"]["kernel"]
    ran = set(doc["mechanisms"])
    for m in MECHS:
        assert m in ran or m in doc["skipped"], f"{m} neither ran nor was skipped"
    for m, why in doc["skipped"].items():
        assert "apt-get install" in why or "external" in m
    assert {"host", "direct", "nat", "proxy"} <= ran
    samples = doc["samples"]
    assert {(s["mechanism"], s["scenario"]) for s in samples} == {(m, sc) for m in ran for sc in ("bulk-in", "rr")}
    for s in samples:
        assert s["raw"], "the tool's own summary is kept with every sample"
        if s["ok"]:
            assert s["value"] > 0 and s["efficiency"] > 0
            assert 0 < s["cpu"]["busy"] <= 1 and s["cpu"]["ncpu"] == doc["machine"]["cpus"]
            assert len(s["cpu"]["per_cpu"]) == doc["machine"]["cpus"]
        else:
            assert s["value"] is None and s["efficiency"] is None and s["error"]
    assert sum(s["ok"] for s in samples) >= len(samples) // 2, [s["error"] for s in samples if not s["ok"]]
    assert (p.returncode == 0) == all(s["ok"] for s in samples)
    for s in samples:
        if s["mechanism"] in ("proxy", "docker-proxy") and s["ok"]:
            assert s["publisher"]["pss_kib"] > 0 and s["publisher"]["cpu_seconds"] >= 0
    rows = {(r["scenario"], r["mechanism"]): r for r in doc["summary"]}
    assert rows[("bulk-in", "host")]["ratio_vs_host"]["median"] == pytest.approx(1.0)
    assert rows[("bulk-in", "docker-proxy")]["article"]["gbit_per_s"] == 42.0 if "docker-proxy" in ran else True
    assert "mechanism" in p.stdout and "article" in p.stdout
    assert png.read_bytes().startswith(b"\x89PNG")
    assert set(_leftovers()) <= before


def test_bench_cleans_up_on_sigint(tmp_path: Path) -> None:
    before = set(_leftovers())
    proc = subprocess.Popen([PW, "bench", "--duration", "5", "--rounds", "1", "--placement", "both",
                             "--scenarios", "bulk-in"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd="/")
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        seen = ""
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            seen += line
            if "round 1/1" in line or not line:
                break
        assert "round 1/1" in seen, seen
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "removed" in err
    assert set(_leftovers()) <= before
