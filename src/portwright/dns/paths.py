"""Where a state directory's resolver keeps its control socket and pid file.

Apart from ``server`` so that the engine's side (``service``, imported by every CLI command) can
find the resolver without importing the resolver itself, and with it dnspython: that import cost
each command about a second on a loaded machine (measured with cProfile, issue 14).
"""

from __future__ import annotations

import os


def ctl_path(state_dir: str) -> str:
    return os.path.join(state_dir, "ctl", "dns.sock")


def pid_path(state_dir: str) -> str:
    return os.path.join(state_dir, "ctl", "dns.pid")
