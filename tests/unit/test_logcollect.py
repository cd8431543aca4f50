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


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the collector is built with gcc")
def test_the_takeover_note_is_a_line_of_its_own(tmp_path: Path) -> None:
    """The note a replacement writes ends its line: the next stderr line is not glued to it."""
    import signal
    import time

    (tmp_path / "logs").mkdir()
    log_path = str(tmp_path / "logs" / "c.log")
    fds = logcollect.start(log_path)
    assert fds is not None
    records = logcollect.records_path(log_path)
    os.write(fds[1], b"before\n")
    deadline = time.monotonic() + 20
    while len(_pair(records)) != 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the spare is forked just after the collector says it runs
    pair = _pair(records)
    reader = next(ppid for pid, ppid in pair if ppid in {p for p, _ in pair})
    os.kill(reader, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while len(_pair(records)) != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.write(fds[1], b"after\n")
    for fd in fds:
        os.close(fd)
    assert logcollect.finished(records, 20.0)
    recs, _ = logs.split_records(Path(records).read_bytes())
    assert [(r.stream, r.full) for r in recs] == [(b"e", True), (b"n", True), (b"e", True)]


def _pair(records: str) -> list[tuple[int, int]]:
    """(pid, parent pid) of the live collector processes of ``records``."""
    out = []
    for d in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if argv[:2] == [logcollect.NAME.encode(), records.encode()] and stat[0] != "Z":
            out.append((int(d), int(stat[1])))
    return out
