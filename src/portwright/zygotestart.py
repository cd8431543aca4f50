"""Finding and starting the fork server (``zygote``): the part that imports nothing heavy.

Shared by ``zygote.spawn`` and by the ``portwright`` entry point (``entry``), which starts the
server for a detached run before the CLI has imported anything, so that the server's own start-up
(a Python of its own that imports everything a supervisor runs) overlaps the CLI's.

One server per state directory, and one start at a time, by a lock: ``STATE/ctl/zygote.lock``
(flock) is held by the server for its whole life. Whoever starts a server takes the lock first
and passes it to the new process, which inherits it (``LOCK_FD_ENV`` names the descriptor): from
the moment a server is started until it exits, the lock says "running, or starting", and a second
starter waits for that server's socket instead of starting another (two used to race: the later
one unlinked the earlier one's socket and bound its own, and the earlier one lived on, unreachable).
The kernel drops the lock when the server dies, however it dies; the server's children close
their copy of it, so a sandbox that outlives the server does not hold it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys

from .kernel import runner
from .kernel.unixpath import unix_op

LOCK_FD_ENV = "PORTWRIGHT_ZYGOTE_LOCK_FD"  # the server's inherited lock descriptor


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, "ctl", "zygote.sock")


def pid_path(state_dir: str) -> str:
    return os.path.join(state_dir, "ctl", "zygote.pid")


def lock_path(state_dir: str) -> str:
    return os.path.join(state_dir, "ctl", "zygote.lock")


def try_connect(state_dir: str) -> socket.socket | None:
    """A connection to the running server, or None if none answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        unix_op(s, socket_path(state_dir), "connect")
        return s
    except OSError:
        s.close()
        return None


def _open_lock(state_dir: str) -> int:
    os.makedirs(os.path.join(state_dir, "ctl"), mode=0o700, exist_ok=True)
    return os.open(lock_path(state_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def start_unless_running(state_dir: str) -> bool:
    """Start a server for ``state_dir`` unless one runs or is starting; True if this call
    started one. Raises KernelError when the server cannot be started at all."""
    fd = _open_lock(state_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a server holds it: running, or still starting
        os.makedirs(os.path.join(state_dir, "logs"), mode=0o700, exist_ok=True)
        # -I and cwd=/: it imports only the installed package, never a stray module that
        # happens to sit in the user's directory (CMD still runs in the spec's cwd).
        runner.spawn_detached(
            [sys.executable, "-I", "-m", "portwright", "_zygote", state_dir],
            log_path=os.path.join(state_dir, "logs", "supervisors.log"),
            cwd="/",
            env={**os.environ, "PORTWRIGHT_STATE_DIR": state_dir, LOCK_FD_ENV: str(fd)},
            pass_fds=(fd,),
            what="the fork server",
        )
        return True  # the lock stays held by the server's copy of the descriptor
    finally:
        os.close(fd)


def hold_lock(state_dir: str) -> int | None:
    """In the server, at its start: the lock descriptor it keeps until it exits (inherited from
    its starter, or taken now when it was started by hand), or None when another server holds
    the lock (this one must exit)."""
    inherited = os.environ.pop(LOCK_FD_ENV, None)
    if inherited is not None:
        try:
            fd = int(inherited)
            os.set_inheritable(fd, False)  # nothing it runs inherits it
            if os.path.samestat(os.fstat(fd), os.stat(lock_path(state_dir))):
                return fd
        except (ValueError, OSError):
            pass
    fd = _open_lock(state_dir)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
