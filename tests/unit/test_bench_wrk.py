"""wrk summary parsing (Lua done hook) against output recorded on this machine (wrk 4.1.0)."""

from __future__ import annotations

from pathlib import Path

import pytest

from portwright.bench import wrk

DATA = Path(__file__).parent / "data"


def test_connection_close_recorded() -> None:
    r = wrk.parse((DATA / "wrk_close.txt").read_text())
    assert r.ok and r.error is None
    assert r.requests == 59407
    assert r.duration_s == pytest.approx(1.100206)
    # wrk's own text line says Requests/sec: 53996.25
    assert r.requests_per_second == pytest.approx(53996.25, rel=1e-4)
    assert r.latency_us["p50"] == 385 and r.latency_us["p99"] == 1310
    assert sum(r.errors.values()) == 0


def test_keepalive_recorded() -> None:
    r = wrk.parse((DATA / "wrk_keepalive.txt").read_text())
    assert r.ok
    assert r.requests_per_second == pytest.approx(162155.87, rel=1e-4)


def test_refused_is_a_failure_without_a_number() -> None:
    r = wrk.parse((DATA / "wrk_refused.txt").read_text(), returncode=1)
    assert not r.ok and r.requests_per_second is None
    assert r.error is not None and "Connection refused" in r.error


def test_status_errors_fail_the_run() -> None:
    r = wrk.parse((DATA / "wrk_status_503.txt").read_text())
    assert not r.ok and r.requests_per_second is None
    assert r.errors["status"] == 62193
    assert r.error is not None and "status 62193" in r.error


def test_few_errors_are_tolerated_and_reported() -> None:
    line = (
        'PWJSON {"duration_us":1000000,"requests":1000,"bytes":1,"errors":{"connect":0,"read":5,'
        '"write":0,"status":0,"timeout":0},"latency_us":{"min":1,"mean":2.0,"max":3,"stdev":0.5,'
        '"p50":2,"p90":3,"p99":3,"p999":3}}'
    )
    r = wrk.parse(line + "\n")
    assert r.ok and r.errors["read"] == 5 and r.requests_per_second == pytest.approx(1000.0)


def test_nonzero_exit_is_failure() -> None:
    r = wrk.parse((DATA / "wrk_close.txt").read_text(), returncode=1)
    assert not r.ok and r.requests_per_second is None


def test_client_command_and_hook() -> None:
    cmd = wrk.client_command("http://127.0.0.1:80/", 3, 32, 2, True, "/tmp/x.lua")
    assert cmd[:9] == ["wrk", "-t", "2", "-c", "32", "-d", "3s", "--latency", "-s"]
    assert ["-H", "Connection: close"] == cmd[10:12]
    assert "Connection: close" not in wrk.client_command("http://h/", 3, 32, 2, False, "x")
    assert "done = function(summary, latency, requests)" in wrk.LUA_DONE_HOOK
    assert wrk.MARKER.strip() in wrk.LUA_DONE_HOOK
