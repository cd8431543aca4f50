"""The shared relay's resident modules (issue 15): what it imports to serve is memory it keeps on
every Docker host, so logging, json, ctypes and argparse stay out until asked for (a status query,
a worker message, a log line outside the relay). Its log lines still reach relay.log (plog's sink)
and other processes' proxy loggers still go through logging. No root needed."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from portwright.proxy import plog, shared

HEAVY = ("logging", "json", "ctypes", "argparse", "traceback")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(out.stdout.split())


def test_serving_modules_leave_the_heavy_ones_out() -> None:
    mods = _modules_after("import portwright.proxy.shared, portwright.proxy.workers, portwright.proxy.server")
    assert "portwright.proxy.shared" in mods
    assert not set(HEAVY) & mods, sorted(set(HEAVY) & mods)


def test_the_relay_serve_arguments_are_read_without_argparse() -> None:
    mods = _modules_after(
        "from portwright.proxy import shared\nassert shared._serve_args(['serve', '--dir', '/x', '--workers', '1'])"
    )
    assert "argparse" not in mods


def test_plog_writes_to_the_sink_without_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    monkeypatch.setattr(plog, "sink", lines.append)
    log = plog.get("portwright.proxy.test")
    log.info("port %s for pid %d", "0.0.0.0:80/tcp", 7)
    log.warning("plain %s")  # no arguments: not %-formatted, as logging does
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("handler failed")
    assert lines[0] == "port 0.0.0.0:80/tcp for pid 7"
    assert lines[1] == "plain %s"
    assert lines[2].startswith("handler failed\nTraceback") and lines[2].endswith("ValueError: boom")


def test_plog_without_a_sink_is_the_standard_logger(caplog: pytest.LogCaptureFixture) -> None:
    assert plog.sink is None
    with caplog.at_level(logging.INFO, logger="portwright.proxy"):
        plog.get("portwright.proxy").log(plog.WARNING, "cannot take more: %s", "EMFILE")
    rec = caplog.records[-1]
    assert (rec.name, rec.levelno, rec.getMessage()) == (
        "portwright.proxy",
        logging.WARNING,
        "cannot take more: EMFILE",
    )
    assert (plog.INFO, plog.WARNING, plog.ERROR) == (logging.INFO, logging.WARNING, logging.ERROR)


def test_log_line_is_the_old_relay_log_format() -> None:
    os.environ.setdefault("TZ", "UTC")
    line = shared.log_line(1764505800.25, 42, "relay started")
    assert line.endswith(",250 pw-relay[42] relay started\n")
    stamp = line.split(" pw-relay")[0]
    assert len(stamp) == len("2025-11-30 12:30:00,250") and stamp[4] == "-" and stamp[13] == ":"
