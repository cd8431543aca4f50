"""The user's terminal for ``run -it`` and ``exec -it``: CMD gets the terminal itself, in a
process group of its own that is the terminal's foreground group, as a shell runs a job.

So the terminal is a real one all the way (the user's terminal or pseudo-terminal, no relay in
between): window-size changes reach CMD as SIGWINCH from the kernel, Ctrl-C and Ctrl-Z signal
CMD's group and not portwright, and ``bash -i`` finds itself in the foreground and turns job
control on. When CMD is done, the foreground goes back to portwright's group. ``tcsetpgrp`` from
a background group raises SIGTTOU, which is ignored around each call (POSIX, tcsetpgrp(3)).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

TTY_FD = 0  # the terminal is the one on stdin (checked by require_terminal)


def require_terminal(flag: str = "-t") -> None:
    """Refuse ``-t`` when stdin is not a terminal, as Docker does."""
    from ..errors import BadInput

    if not os.isatty(TTY_FD):
        raise BadInput(f"{flag}: the input device is not a TTY; drop -t, or run it from a terminal")


def _set_foreground(pgrp: int) -> None:
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(TTY_FD, pgrp)
    finally:
        signal.signal(signal.SIGTTOU, old)


def take_foreground() -> None:
    """In the child, after fork and before exec: a process group of its own, made the
    terminal's foreground group (the parent does the same, so neither order loses)."""
    os.setpgid(0, 0)
    _set_foreground(os.getpgrp())


def give_foreground(pid: int) -> None:
    """In the parent, right after fork: the child's group becomes the foreground."""
    with contextlib.suppress(OSError):  # the child did it first, exec'd, or is already gone
        os.setpgid(pid, pid)
        _set_foreground(pid)


@contextlib.contextmanager
def foreground_back() -> Iterator[None]:
    """Take the terminal's foreground back for our own group once CMD is done."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            _set_foreground(os.getpgrp())
