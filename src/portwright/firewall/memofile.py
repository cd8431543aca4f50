"""Where a state directory keeps its ``verified.Verified`` record: one small JSON file.

It is a cache: a missing, unreadable or damaged file only means the next check reads the table.
Written whole to a temporary file and renamed over the old one, so a reader never sees half a
record. Any process may write it at any time: every record is true for the generation it names
(``verified``), so a race between writers can only leave an older, unused record.
"""

from __future__ import annotations

import contextlib
import json
import os

from . import verified

MEMO_NAME = "fw-verified.json"  # in the state directory


class MemoFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> verified.Verified | None:
        try:
            with open(self.path) as f:
                return verified.from_json(json.load(f))
        except (OSError, ValueError):
            return None

    def save(self, v: verified.Verified | None) -> None:
        if v is None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(verified.to_json(v), f)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
