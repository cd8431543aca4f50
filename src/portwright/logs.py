"""``portwright logs``: a detached sandbox's output, its two streams kept apart as Docker keeps them.

CMD writes straight into two files (``kernel/spawn.py`` opens them: stdout at the record's
``log_path``, stderr beside it), so no copying process sits between a sandbox and its logs and
nothing is lost if a supervisor dies. ``logs`` prints the stdout file to stdout and the stderr
file to stderr (``logs NAME 2>/dev/null`` shows stdout only); ``--tail N`` keeps the last N lines
of each stream; ``-f`` follows both files until the sandbox is gone and the files are drained.

Because nothing timestamps CMD's writes, the relative order of stdout and stderr lines is not
kept, and there are no per-line times for ``--timestamps``/``--since``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import BinaryIO

from .kernel.spawn import stderr_path

FOLLOW_POLL_SECONDS = 0.1  # how often -f looks for new output; a human cannot tell the lag
CHUNK = 1 << 16


def parse_tail(text: str) -> int | None:
    """Docker's ``--tail``: a line count, or ``all`` (None)."""
    if text == "all":
        return None
    if not text.isdigit():
        raise ValueError(f"--tail {text!r}: expected a number of lines or 'all'")
    return int(text)


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
    """The stdout log and the stderr log of a detached sandbox."""
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


def show(
    log_path: str,
    outs: tuple[BinaryIO, BinaryIO],
    *,
    tail: int | None = None,
    follow: bool = False,
    running: Callable[[], bool] = lambda: False,
) -> None:
    """Write the sandbox's stdout log to ``outs[0]`` and its stderr log to ``outs[1]``; with
    ``follow``, keep writing what CMD adds until ``running()`` is false and nothing is left."""
    paths = stream_paths(log_path)
    offsets = [0, 0]
    for i, path in enumerate(paths):
        data, offsets[i] = _read_from(path, 0)
        _write(outs[i], last_lines(data, tail))
    while follow:
        alive = running()  # asked before the last read, so output written just before exit is kept
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
