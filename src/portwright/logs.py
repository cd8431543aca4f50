"""``portwright logs``: a detached sandbox's output, with times, its two streams kept apart on
the way out (stdout to stdout, stderr to stderr, so ``logs NAME 2>/dev/null`` shows stdout only)
and in order with each other in the file.

CMD writes into two pipes; a tiny collector (``kernel/logcollect.py``) stamps each read with
the time and appends records, stdout's and stderr's in one file, in the order it read them. This
module reads them back: ``-t`` puts each line's time (RFC 3339 with nanoseconds, as
``docker logs -t``) in front of it, ``--since``/``--until`` keep the lines whose time is in range
(Docker's forms: RFC 3339, Unix seconds, or a duration such as ``10m`` or ``1h30m`` before now),
``--tail N`` keeps the last N lines of the two streams together (as Docker's json-file), ``-f``
follows the file until the sandbox is gone and everything is printed. A line that came in
pieces (a long one, or a partial last line) is printed whole, once, under its first piece's time.

Sandboxes started without the collector (gcc missing, or an older release) have two plain
files, stdout's and stderr's: they are shown as before, without times (``-t`` says so once;
``--since``/``--until`` are refused, having nothing to compare).
"""

from __future__ import annotations

import datetime
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO

from .kernel.logcollect import error_path, finished, records_path
from .kernel.spawn import stderr_path

FOLLOW_POLL_SECONDS = 0.1  # how often -f looks for new output; a human cannot tell the lag
COLLECTOR_DRAIN_SECONDS = 5.0  # -f at the end: how long the collector may take to write the last lines
TIME_WIDTH = 30  # "2026-11-30T09:30:00.123456789Z"
HEADER = TIME_WIDTH + 5  # time, " o F "
STREAMS = {b"o": 0, b"e": 1, b"n": 1}  # the collector's own notes go to stderr

# Go's time.ParseDuration units, in seconds (Docker's --since 10m, 1h30m, 1.5h, 300ms).
_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIX = re.compile(r"(\d+)(?:\.(\d+))?")
_FRACTION = re.compile(r"\.(\d+)")


def parse_tail(text: str) -> int | None:
    """Docker's ``--tail``: a line count, or ``all`` (None)."""
    if text == "all":
        return None
    if not text.isdigit():
        raise ValueError(f"--tail {text!r}: expected a number of lines or 'all'")
    return int(text)


def _stamp(seconds: int, fraction: str) -> bytes:
    whole = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{(fraction + '0' * 9)[:9]}Z".encode()


def parse_time(flag: str, text: str, now: float) -> bytes:
    """``--since``/``--until`` as Docker reads them, as a record time (30 bytes, UTC, nanoseconds):
    Unix seconds (``1700000000.5``), a duration before ``now`` (``10m``, ``1h30m``), or RFC 3339
    (``2026-11-30T09:30:00Z``, with an offset, fraction or neither; a date; no zone means local
    time, as Docker takes it)."""
    t = text.strip()
    if m := _UNIX.fullmatch(t):
        return _stamp(int(m.group(1)), m.group(2) or "")
    if _DURATION.fullmatch(t):
        back = sum(Fraction(n) * _UNITS[u] for n, u in _DURATION_PART.findall(t))  # exact, in ns
        ns = round(now * 1e6) * 1000 - int(back)  # now to the microsecond: a float holds no more
        return _stamp(ns // 10**9, f"{ns % 10**9:09d}")
    frac = _FRACTION.search(t)
    base = t[: frac.start()] + t[frac.end() :] if frac else t
    try:
        when = datetime.datetime.fromisoformat(base)
    except ValueError:
        raise ValueError(
            f"{flag} {text!r}: expected RFC 3339 (2026-11-30T09:30:00Z), Unix seconds or a "
            "duration such as 10m or 1h30m"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # no zone: the local time, as Docker reads it
    return _stamp(int(when.timestamp()), frac.group(1) if frac else "")


@dataclass(frozen=True, slots=True)
class Record:
    """One record of the collector: when, which stream, whether it ended a line, its bytes."""

    time: bytes
    stream: bytes  # o, e or n
    full: bool
    payload: bytes


def parse_record(line: bytes) -> Record | None:
    """A record line (without its newline); None for an empty or malformed one (the blank line
    a restarted collector writes, or a record torn by a kill)."""
    if len(line) < HEADER or line[TIME_WIDTH : TIME_WIDTH + 1] != b" " or line[HEADER - 1 : HEADER] != b" ":
        return None
    stream, flag = line[TIME_WIDTH + 1 : TIME_WIDTH + 2], line[TIME_WIDTH + 3 : TIME_WIDTH + 4]
    if stream not in STREAMS or flag not in (b"F", b"P") or not line[:TIME_WIDTH].endswith(b"Z"):
        return None
    return Record(line[:TIME_WIDTH], stream, flag == b"F", line[HEADER:])


def split_records(buf: bytes) -> tuple[list[Record], bytes]:
    """The complete records in ``buf`` and the unfinished rest (kept for the next read)."""
    end = buf.rfind(b"\n") + 1
    recs = [r for r in (parse_record(line) for line in buf[:end].split(b"\n")) if r is not None]
    return recs, buf[end:]


@dataclass(slots=True)
class Printer:
    """Writes records out as lines, keeping per-stream state across reads (-f): whether the
    next record starts a line, and whether the line being printed was kept by the filters."""

    outs: tuple[BinaryIO, BinaryIO]
    timestamps: bool = False
    since: bytes | None = None
    until: bytes | None = None
    at_start: dict[bytes, bool] = field(default_factory=lambda: dict.fromkeys(STREAMS, True))
    keep: dict[bytes, bool] = field(default_factory=lambda: dict.fromkeys(STREAMS, True))

    def wanted(self, r: Record) -> bool:
        return (self.since is None or r.time >= self.since) and (self.until is None or r.time <= self.until)

    def skip_until_line_start(self, before: Iterable[Record]) -> None:
        """Start mid-file (--tail): lines begun in ``before`` are not printed in part."""
        for r in before:
            self.at_start[r.stream] = r.full
        for s in self.keep:
            self.keep[s] = self.at_start[s]

    def write(self, recs: Iterable[Record]) -> None:
        touched: set[int] = set()
        for r in recs:
            i = STREAMS[r.stream]
            if self.at_start[r.stream]:
                self.keep[r.stream] = self.wanted(r)
                if self.keep[r.stream] and self.timestamps:
                    self.outs[i].write(r.time + b" ")
            if self.keep[r.stream]:
                self.outs[i].write(r.payload + b"\n" if r.full else r.payload)
                touched.add(i)
            self.at_start[r.stream] = r.full
        for i in sorted(touched):
            self.outs[i].flush()


def tail_start(recs: list[Record], n: int | None, printer: Printer) -> int:
    """Where printing starts for ``--tail n``: the n-th last line start the filters keep."""
    if n is None:
        return 0
    at_start = dict.fromkeys(STREAMS, True)
    starts = []
    for k, r in enumerate(recs):
        if at_start[r.stream] and printer.wanted(r):
            starts.append(k)
        at_start[r.stream] = r.full
    if n == 0:
        return len(recs)
    return starts[-n] if len(starts) >= n else 0


def show(
    log_path: str,
    printer: Printer,
    *,
    tail: int | None = None,
    follow: bool = False,
    running: Callable[[], bool] = lambda: False,
) -> None:
    """Print the sandbox's records through ``printer``; with ``follow``, keep printing what the
    collector adds until ``running()`` is false and nothing is left."""
    path = records_path(log_path)
    if not running():  # an exited sandbox: its collector may still be writing CMD's last lines
        finished(path, COLLECTOR_DRAIN_SECONDS)
    data, offset = _read_from(path, 0)
    recs, rest = split_records(data)
    k = tail_start(recs, tail, printer)
    printer.skip_until_line_start(recs[:k])
    printer.write(recs[k:])
    while follow:
        alive = running()  # asked before the last read, so output written just before exit is kept
        data, offset = _read_from(path, offset)
        if data:
            recs, rest = split_records(rest + data)
            printer.write(recs)
        elif not alive:
            if finished(path, COLLECTOR_DRAIN_SECONDS):  # what CMD wrote last is in the file now
                recs, rest = split_records(rest + _read_from(path, offset)[0])
                printer.write(recs)
            return
        else:
            time.sleep(FOLLOW_POLL_SECONDS)


def no_times_reason(state_dir: str) -> str:
    """Why a sandbox has plain logs: the collector's build error, or an older start."""
    try:
        with open(error_path(state_dir)) as f:
            first = f.readline().strip()
    except OSError:
        return "it was started by an older release or before the log collector was built"
    return f"the log collector could not be built: {first[:200]}; see {error_path(state_dir)}"


def has_records(log_path: str) -> bool:
    """Was this sandbox's output collected (records with times), or written to plain files?"""
    return os.path.exists(records_path(log_path))


# ------------------------------------------------------------------------------------------------
# Plain files: sandboxes started without the collector
# ------------------------------------------------------------------------------------------------


def last_lines(data: bytes, n: int | None) -> bytes:
    """The last ``n`` lines of ``data`` (all of it for None). A final line without a newline
    counts as a line, as ``tail -n`` counts it."""
    if n is None:
        return data
    if n == 0:
        return b""
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    pos = end
    for _ in range(n):
        pos = data.rfind(b"\n", 0, pos)
        if pos < 0:
            return data
    return data[pos + 1 :]


def stream_paths(log_path: str) -> tuple[str, str]:
    """The stdout log and the stderr log of a sandbox started without the collector."""
    return log_path, stderr_path(log_path)


def _read_from(path: str, offset: int) -> tuple[bytes, int]:
    """Bytes of ``path`` from ``offset`` on (none if missing); a file that shrank is re-read
    from its start."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:
                offset = 0
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)


def show_plain(
    log_path: str,
    outs: tuple[BinaryIO, BinaryIO],
    *,
    tail: int | None = None,
    follow: bool = False,
    running: Callable[[], bool] = lambda: False,
) -> None:
    """The two plain files: stdout's to ``outs[0]``, stderr's to ``outs[1]``; ``tail`` lines of
    each; with ``follow``, until ``running()`` is false and nothing is left."""
    paths = stream_paths(log_path)
    offsets = [0, 0]
    for i, path in enumerate(paths):
        data, offsets[i] = _read_from(path, 0)
        _write(outs[i], last_lines(data, tail))
    while follow:
        alive = running()
        got = False
        for i, path in enumerate(paths):
            data, offsets[i] = _read_from(path, offsets[i])
            if data:
                got = True
                _write(outs[i], data)
        if not got:
            if not alive:
                return
            time.sleep(FOLLOW_POLL_SECONDS)


def _write(out: BinaryIO, data: bytes) -> None:
    if data:
        out.write(data)
        out.flush()
