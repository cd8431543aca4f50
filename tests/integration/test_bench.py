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
    p = subprocess.run(
        [
            PW,
            "bench",
            "--duration",
            "1",
            "--rounds",
            "1",
            "--scenarios",
            "bulk-in,rr",
            "--json",
            str(out),
            "--plot",
            str(png),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd="/",
    )
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
    assert {(s["mechanism"], s["scenario"]) for s in samples} == {
        (m, sc) for m in ran for sc in ("bulk-in", "rr")
    }
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
    assert (
        rows[("bulk-in", "docker-proxy")]["article"]["gbit_per_s"] == 42.0 if "docker-proxy" in ran else True
    )
    assert "mechanism" in p.stdout and "article" in p.stdout
    assert png.read_bytes().startswith(b"\x89PNG")
    assert set(_leftovers()) <= before


def test_bench_cleans_up_on_sigint(tmp_path: Path) -> None:
    before = set(_leftovers())
    proc = subprocess.Popen(
        [PW, "bench", "--duration", "5", "--rounds", "1", "--placement", "both", "--scenarios", "bulk-in"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
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


def _sandbox_leftovers() -> list[str]:
    left = _leftovers()
    ps = subprocess.run([PW, "ps", "-a", "--format", "json"], capture_output=True, text=True, cwd="/")
    left += [
        str(s.get("Names"))
        for s in (json.loads(line) for line in ps.stdout.splitlines() if line.strip())
        if str(s.get("Names", "")).startswith("pwb")
    ]
    left += [f"/var/tmp/{d}" for d in os.listdir("/var/tmp") if d.startswith("pwb-dockerd-")]
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"pwb-dockerd-" in cmd:
            left.append(f"process {pid}: {cmd[:80]!r}")
    return left


def test_bench_sandboxes_two_one_round(tmp_path: Path) -> None:
    """--sandboxes 2 --rounds 1: both variants for portwright (and Docker when dockerd can run
    here), PSS and rm -f measured, everything removed. Structure only, no speed."""
    out = tmp_path / "s.json"
    had_docker0 = os.path.exists("/sys/class/net/docker0")
    before = set(_sandbox_leftovers())
    p = subprocess.run(
        [PW, "bench", "--sandboxes", "2", "--rounds", "1", "--json", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=400,
        cwd="/",
    )
    assert p.returncode in (0, 1), p.stderr
    res = json.loads(out.read_text())["sandboxes"]
    assert res["n"] == 2 and res["rounds"] == 1 and res["variants"] == ["none", "published"]
    systems = {"portwright"} | ({"docker"} if not res["docker_skipped"] else set())
    assert {(s["system"], s["variant"]) for s in res["samples"]} == {
        (sy, v) for sy in systems for v in ("none", "published")
    }
    for s in res["samples"]:
        assert s["ok"], s["error"]
        assert s["pss_kib"] > 0 and s["per_sandbox_kib"] == pytest.approx(s["pss_kib"] / 2)
        assert s["rm_s"] > 0 and s["start_s"] > 0 and s["left_after_rm"] == []
        counts = {k: v["count"] for k, v in s["processes"].items()}
        if s["system"] == "portwright":
            assert sum(c for k, c in counts.items() if k.startswith("portwright")) >= 2, counts
        else:
            assert sum(c for k, c in counts.items() if k.startswith("containerd-shim")) == 2, counts
    ratios = [r for r in res["summary"] if r.get("ratio")]
    assert len(ratios) == (2 if "docker" in systems else 0)
    assert "MiB each" in p.stdout and "rm -f all" in p.stdout
    assert set(_sandbox_leftovers()) <= before
    assert os.path.exists("/sys/class/net/docker0") == had_docker0


def test_bench_scale_nft_only_small(tmp_path: Path) -> None:
    """The firewall library alone (what python -m portwright.firewall.bench measured), in throwaway
    namespaces that are gone afterwards."""
    need("iperf3", "iperf3")
    out = tmp_path / "n.json"
    before = set(_leftovers())
    p = subprocess.run(
        [
            PW,
            "bench",
            "--scale",
            "--scale-shapes",
            "nft-only",
            "--scale-sizes",
            "1,50",
            "--duration",
            "1",
            "--json",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=200,
        cwd="/",
    )
    assert p.returncode in (0, 1), p.stderr
    rows = json.loads(out.read_text())["scale"]
    assert [(r["shape"], r["ports"]) for r in rows] == [("nft-only", 1), ("nft-only", 50)]
    for r in rows:
        assert r["setup_s"] > 0 and r["teardown_s"] > 0, r
        assert r["ok"] == (r["error"] is None) and (r["first_gbit"] or 0) >= 0
    assert set(_leftovers()) <= before
