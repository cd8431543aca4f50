"""The log collector (kernel/logcollect.py) under a seeded random load with faults: writers on
both streams with random line lengths (empty lines, lines far longer than a pipe, partial last
lines), random bytes (binary, NULs), random flush points, and collector processes (the reader or
its spare) killed with SIGKILL in between. Every byte must come back, per stream, in order.

No root: the collector is built with gcc into a temporary state dir (skipped without gcc)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from portwright import logs
from portwright.kernel import logcollect

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="the collector is built with gcc")


def _collectors(records: str) -> list[int]:
    """Live (not zombie) collector processes writing ``records``."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argv[:2] == [logcollect.NAME.encode(), records.encode()] and state != "Z":
            found.append(int(d))
    return sorted(found)


def _wait(cond: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def _chunk(rng: random.Random) -> bytes:
    """A burst: a few lines of random length, maybe ending without a newline."""
    parts = []
    for _ in range(rng.randint(1, 6)):
        n = rng.choice([0, 1, rng.randint(2, 200), rng.randint(200, 5000), rng.randint(60_000, 200_000)])
        parts.append(rng.randbytes(n).replace(b"\n", b"x") + b"\n")
    data = b"".join(parts)
    if rng.random() < 0.3:
        data = data[: rng.randint(0, len(data))]  # a flush mid-line
    return data


def _collected(records: str) -> tuple[list[bytes], int]:
    recs, rest = logs.split_records(Path(records).read_bytes())
    assert rest == b""
    got = {b"o": bytearray(), b"e": bytearray()}
    notes = 0
    for r in recs:
        if r.stream == b"n":
            notes += 1
            continue
        got[r.stream] += r.payload + (b"\n" if r.full else b"")
    return [bytes(got[b"o"]), bytes(got[b"e"])], notes


@pytest.mark.parametrize("seed", [int(os.environ.get("PW_STRESS_SEED", "0")) or random.randrange(1 << 30)])
def test_every_byte_in_order_through_kills(tmp_path: Path, seed: int) -> None:
    print(f"seed {seed} (rerun with PW_STRESS_SEED={seed})")
    rng = random.Random(seed)
    (tmp_path / "logs").mkdir()
    log_path = str(tmp_path / "logs" / "x.log")
    records = logcollect.records_path(log_path)
    fds = logcollect.start(log_path)
    assert fds is not None, (tmp_path / "bin" / f"{logcollect.NAME}.error").read_text()
    sent = [bytearray(), bytearray()]
    kills = 0
    try:
        assert _wait(lambda: len(_collectors(records)) == 2)
        for _ in range(rng.randint(150, 250)):
            i = rng.randrange(2)
            data = _chunk(rng)
            view = memoryview(data)
            while view:  # one burst may take several writes (a full pipe writes partly)
                n = os.write(fds[i], view[: rng.randint(1, len(view))])
                view = view[n:]
            sent[i] += data
            if rng.random() < 0.08:
                pids = _collectors(records)
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
                assert _wait(lambda: len(_collectors(records)) == 2), "no new pair after a kill"
    finally:
        for fd in fds:
            os.close(fd)
    assert _wait(lambda: not _collectors(records)), "the collector did not exit at EOF"
    got, notes = _collected(records)
    assert kills > 0
    for i in range(2):
        assert len(got[i]) == len(sent[i]), f"seed {seed}: stream {i}: {len(got[i])} of {len(sent[i])} bytes"
        assert got[i] == bytes(sent[i]), f"seed {seed}: stream {i} differs"
    assert notes <= kills


def test_a_partial_last_line_and_eof() -> None:
    """Written without a newline, then the writer exits: the piece is kept as a P record."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        os.mkdir(os.path.join(d, "logs"))
        log_path = os.path.join(d, "logs", "y.log")
        fds = logcollect.start(log_path)
        assert fds is not None
        os.write(fds[0], b"no newline at the end")
        os.write(fds[1], b"\x00\xff\n")
        for fd in fds:
            os.close(fd)
        records = logcollect.records_path(log_path)
        assert _wait(lambda: not _collectors(records))
        recs, _ = logs.split_records(Path(records).read_bytes())
        assert [(r.stream, r.full, r.payload) for r in recs] == [
            (b"o", False, b"no newline at the end"),
            (b"e", True, b"\x00\xff"),
        ]
