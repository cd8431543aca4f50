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
    logs.show(out_path, (out, err), tail=1)  # type: ignore[arg-type]
    assert (out.getvalue(), err.getvalue()) == (b"o3\n", b"e2\n")


def test_missing_files_are_empty(tmp_path: Path) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    logs.show(str(tmp_path / "never.log"), (out, err))  # type: ignore[arg-type]
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

    logs.show(out_path, (out, err), tail=0, follow=True, running=running)  # type: ignore[arg-type]
    t.join()
    assert out.getvalue() == b"".join(f"line{i}\n".encode() for i in range(5))
    assert err.getvalue() == b"".join(f"err{i}\n".encode() for i in range(5))
