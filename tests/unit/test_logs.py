"""logs.py without root: --tail's arithmetic, the two streams written to two outputs, and -f
following files while another thread appends to them."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from portwright import logs
from portwright.kernel.spawn import stderr_path


@pytest.mark.parametrize(
    ("data", "n", "want"),
    [
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 2, b"b\nc"),  # a last line without a newline counts, as tail -n counts it
        (b"a\nb\nc\n", 5, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 0, b""),
        (b"a\nb\nc\n", None, b"a\nb\nc\n"),
        (b"", 3, b""),
        (b"only\n", 1, b"only\n"),
        (b"\n\n\n", 2, b"\n\n"),
    ],
)
def test_last_lines(data: bytes, n: int | None, want: bytes) -> None:
    assert logs.last_lines(data, n) == want


def test_parse_tail() -> None:
    assert logs.parse_tail("all") is None
    assert logs.parse_tail("7") == 7
    for bad in ("-1", "x", "", "1.5"):
        with pytest.raises(ValueError, match="--tail"):
            logs.parse_tail(bad)


def test_streams_kept_apart(tmp_path: Path) -> None:
    out_path = str(tmp_path / "s.log")
    Path(out_path).write_bytes(b"o1\no2\no3\n")
    Path(stderr_path(out_path)).write_bytes(b"e1\ne2\n")
    out, err = io.BytesIO(), io.BytesIO()
    logs.show_plain(out_path, (out, err), tail=1)  # type: ignore[arg-type]
    assert (out.getvalue(), err.getvalue()) == (b"o3\n", b"e2\n")


def test_missing_files_are_empty(tmp_path: Path) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    logs.show_plain(str(tmp_path / "never.log"), (out, err))  # type: ignore[arg-type]
    assert out.getvalue() == err.getvalue() == b""


def test_follow_prints_what_is_appended_then_stops(tmp_path: Path) -> None:
    out_path = str(tmp_path / "f.log")
    Path(out_path).write_bytes(b"before\n")
    started, done = threading.Event(), threading.Event()

    def writer() -> None:
        started.wait(10)  # after show() has printed the tail, so every line is new to it
        for i in range(5):
            with open(out_path, "ab") as f:
                f.write(f"line{i}\n".encode())
            with open(stderr_path(out_path), "ab") as f:
                f.write(f"err{i}\n".encode())
            time.sleep(0.05)
        done.set()

    t = threading.Thread(target=writer)
    out, err = io.BytesIO(), io.BytesIO()
    t.start()

    def running() -> bool:
        started.set()
        return not done.is_set()

    logs.show_plain(out_path, (out, err), tail=0, follow=True, running=running)  # type: ignore[arg-type]
    t.join()
    assert out.getvalue() == b"".join(f"line{i}\n".encode() for i in range(5))
    assert err.getvalue() == b"".join(f"err{i}\n".encode() for i in range(5))


# ------------------------------------------------------------------------------------------------
# Records (the collector's file): times, order, --since/--until, --tail across both streams
# ------------------------------------------------------------------------------------------------

T = [f"2026-11-30T09:30:0{i}.000000000Z".encode() for i in range(10)]


def _rec(t: int, stream: bytes, payload: bytes, full: bool = True) -> bytes:
    return T[t] + b" " + stream + b" " + (b"F" if full else b"P") + b" " + payload + b"\n"


def _printed(data: bytes, **kw: object) -> tuple[bytes, bytes]:
    recs, rest = logs.split_records(data)
    assert rest == b""
    out, err = io.BytesIO(), io.BytesIO()
    tail = kw.pop("tail", None)
    p = logs.Printer((out, err), **kw)  # type: ignore[arg-type]
    k = logs.tail_start(recs, tail, p)  # type: ignore[arg-type]
    p.skip_until_line_start(recs[:k])
    p.write(recs[k:])
    return out.getvalue(), err.getvalue()


FILE = (
    _rec(0, b"o", b"one")
    + _rec(1, b"o", b"tw", full=False)  # a line in two pieces, with stderr between them
    + _rec(2, b"e", b"err \x00\xff")
    + _rec(3, b"o", b"o")
    + b"\n"  # the blank line a restarted collector writes first
    + _rec(4, b"n", b"portwright: the log collector was killed and restarted")
    + _rec(5, b"o", b"last no newline", full=False)
)


def test_records_streams_pieces_and_binary() -> None:
    out, err = _printed(FILE)
    assert out == b"one\ntwo\nlast no newline"
    assert err == b"err \x00\xff\nportwright: the log collector was killed and restarted\n"


def test_timestamps_on_each_line_once() -> None:
    out, err = _printed(FILE, timestamps=True)
    assert out == T[0] + b" one\n" + T[1] + b" two\n" + T[5] + b" last no newline"
    assert err.startswith(T[2] + b" err")


def test_since_until_keep_whole_lines_by_their_first_piece() -> None:
    out, err = _printed(FILE, since=T[1], until=T[3])
    assert out == b"two\n" and err == b"err \x00\xff\n"
    out, _ = _printed(FILE, since=T[2])  # "two" began at T[1]: its later piece does not count
    assert out == b"last no newline"


def test_tail_counts_lines_of_both_streams_together() -> None:
    out, err = _printed(FILE, tail=2)
    assert out == b"last no newline" and err == b"portwright: the log collector was killed and restarted\n"
    out, err = _printed(FILE, tail=3)  # starts in the middle of "two": not printed in part
    assert out == b"last no newline" and err.startswith(b"err")
    out, err = _printed(FILE, tail=4)  # "two" is the 4th last line: printed whole
    assert out == b"two\nlast no newline" and err.startswith(b"err")
    assert _printed(FILE, tail=0) == (b"", b"")


def test_a_torn_record_is_skipped_and_the_rest_waits_for_its_newline() -> None:
    recs, rest = logs.split_records(
        _rec(0, b"o", b"a") + b"2026-11-30T09:3" + b"\n" + _rec(1, b"e", b"b")[:20]
    )
    assert [r.payload for r in recs] == [b"a"] and rest == _rec(1, b"e", b"b")[:20]


NOW = 1_800_000_000.25  # 2027-01-15T08:00:00.25Z


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1800000000", b"2027-01-15T08:00:00.000000000Z"),
        ("1800000000.5", b"2027-01-15T08:00:00.500000000Z"),
        ("10m", b"2027-01-15T07:50:00.250000000Z"),
        ("1h30m", b"2027-01-15T06:30:00.250000000Z"),
        ("1.5h", b"2027-01-15T06:30:00.250000000Z"),
        ("250ms", b"2027-01-15T08:00:00.000000000Z"),
        ("2027-01-15T08:00:00Z", b"2027-01-15T08:00:00.000000000Z"),
        ("2027-01-15T08:00:00.123456789Z", b"2027-01-15T08:00:00.123456789Z"),
        ("2027-01-15T09:00:00.5+01:00", b"2027-01-15T08:00:00.500000000Z"),
    ],
)
def test_parse_time_docker_forms(text: str, want: bytes) -> None:
    assert logs.parse_time("--since", text, NOW) == want


def test_parse_time_local_and_bad() -> None:
    local = logs.parse_time("--since", "2027-01-15T08:00:00", NOW)  # no zone: local time, as Docker
    assert len(local) == logs.TIME_WIDTH and local.endswith(b"Z")
    for bad in ("yesterday", "10x", "-5m", "2027-13-01"):
        with pytest.raises(ValueError, match="--until"):
            logs.parse_time("--until", bad, NOW)
