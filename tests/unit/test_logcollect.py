"""kernel/logcollect.py's edges without root: the fallback when the collector cannot be built
(tried and said once, plain files instead), and ``finished`` waiting for the collector's lock."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from portwright import logs
from portwright.kernel import logcollect, spawn


def test_without_gcc_plain_files_and_the_reason_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "logs").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no gcc on it
    log_path = str(tmp_path / "logs" / "a.log")
    assert logcollect.start(log_path) is None
    err = Path(logcollect.error_path(str(tmp_path)))
    assert err.read_text().strip()  # why, for `logs -t` to say
    assert "could not be built" in logs.no_times_reason(str(tmp_path))
    out, errfd = spawn.log_fds(log_path)  # the fallback: the two plain files
    os.write(out, b"o\n")
    os.write(errfd, b"e\n")
    os.close(out)
    os.close(errfd)
    assert Path(log_path).read_bytes() == b"o\n" and Path(spawn.stderr_path(log_path)).read_bytes() == b"e\n"
    assert not os.path.exists(logcollect.records_path(log_path))
    err.write_text("kept\n")
    assert logcollect.binary(str(tmp_path)) is None and err.read_text() == "kept\n"  # not tried again


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the collector is built with gcc")
def test_finished_waits_for_the_collector(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    log_path = str(tmp_path / "logs" / "b.log")
    fds = logcollect.start(log_path)
    assert fds is not None
    records = logcollect.records_path(log_path)
    assert not logcollect.finished(records, 0.2)  # alive: it holds its lock
    for fd in fds:
        os.close(fd)
    assert logcollect.finished(records, 10.0)
    assert logcollect.finished(str(tmp_path / "nothing.records"), 0.0)
