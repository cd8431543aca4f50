"""The runner's pure helpers: raw-summary capture, server liveness, port blocks, progress line."""

from __future__ import annotations

import io
import json
import os
import socket
from pathlib import Path

from portwright.bench import scenarios

DATA = Path(__file__).parent / "data"


def test_raw_keeps_the_tools_own_summary() -> None:
    text = (DATA / "iperf3_p10_ingress.json").read_text()
    raw = scenarios._raw("iperf3", text, "")
    assert raw["end"] == json.loads(text)["end"]
    refused = scenarios._raw("iperf3", (DATA / "iperf3_refused.json").read_text(), "")
    assert "Connection refused" in str(refused["error"])
    w = scenarios._raw("wrk", (DATA / "wrk_close.txt").read_text(), "")
    assert json.loads(str(w["summary"]))["requests"] == 59407
    bad = scenarios._raw("wrk", "", "unable to connect to 198.18.0.2:80 Connection refused\n")
    assert bad["summary"] is None and "Connection refused" in str(bad["stderr_tail"])


def test_dead_servers_are_named() -> None:
    with open(f"/proc/{os.getpid()}/comm", encoding="ascii") as f:
        comm = f.read().strip()
    t = scenarios.Target("nat", 1, 2, "127.0.0.1", "")
    t.servers = {os.getpid(): comm}
    assert t.dead_servers() == []
    t.servers = {os.getpid(): "nginx"}  # same pid, other program: the server is gone
    assert t.dead_servers() == [f"nginx (pid {os.getpid()})"]


def test_free_port_block_is_bindable() -> None:
    base = scenarios.free_port_block(20)
    for port in (base, base + 19):
        with socket.socket() as s:
            s.bind(("0.0.0.0", port))
    assert base in range(20000, 29000)


def test_progress_line_names_stage_mechanism_and_time_left() -> None:
    out = io.StringIO()
    p = scenarios.Progress(total=10, per_run_s=4.0, stream=out)
    p.show(2, 3, "local", "bulk-in", "nat")
    line = out.getvalue()
    assert "round 2/3" in line and "bulk-in" in line and "nat" in line and "run 1/10" in line
    assert "~0:40 left" in line
    p.show(0, 3, "local", "rr", "host")
    assert "warm-up" in out.getvalue()
