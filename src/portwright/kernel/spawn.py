"""Starting CMD: fork, join the sandbox's cgroup and netns, become a session leader, exec; a
detached CMD's output goes to its log collector (``logcollect``), or to two plain files without one.

Plain ``os.fork``/``os.execvpe`` instead of ``subprocess.Popen``: the supervisor stays small (Popen's
machinery would be copied into every sandbox's process) and owns every step between fork and exec.
A pipe closed on exec carries an exec failure back as one line, so a missing program is a clear
error and not a silent exit 127.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Mapping, Sequence

from ..errors import BadInput
from . import cgroup, logcollect, netns
from . import tty as _tty


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    netns_path: str | None,
    cgroup_path: str | None,
    log_path: str | None,
    stdin_null: bool,
    child_setup: Callable[[], None] | None = None,
    tty: bool = False,
) -> int:
    """Start argv in the sandbox; return its pid (also its process group and session id). With a
    ``log_path``, CMD's output goes to its log collector (``log_fds``).
    ``child_setup`` runs last before exec (``kernel.caps.child_setup``: /sys, privileges)."""
    out, err = log_fds(log_path) if log_path else (None, None)
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: only os-level calls until exec
        try:
            os.close(r)
            cgroup.join_fn(cgroup_path)()
            if netns_path is not None:
                netns.setns(netns_path)
                netns.bind_etc(netns_path)  # its resolv.conf, as 'ip netns exec' mounts it
            if tty:  # run -t: a job of the user's terminal session, in the foreground
                _tty.take_foreground()
            else:
                os.setsid()
            os.chdir(cwd if os.path.isdir(cwd) else "/")
            if stdin_null:
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
            if out is not None and err is not None:
                os.dup2(out, 1)
                os.dup2(err, 2)
            _close_from(3, keep=w)
            if child_setup is not None:
                child_setup()
            os.execvpe(argv[0], list(argv), dict(env))
        except BaseException as e:
            try:
                os.write(w, (getattr(e, "strerror", None) or str(e) or type(e).__name__).encode()[:400])
            finally:
                os._exit(127)
    if tty:
        _tty.give_foreground(pid)
    os.close(w)
    for fd in (out, err):
        if fd is not None:
            os.close(fd)
    try:
        failure = os.read(r, 512)
    finally:
        os.close(r)
    if failure:
        os.waitpid(pid, 0)
        raise BadInput(f"cannot start {argv[0]!r}: {failure.decode(errors='replace')}")
    return pid


def stderr_path(log_path: str) -> str:
    """Where a detached CMD's stderr goes: beside its stdout log, kept apart as Docker keeps the
    two streams (``logs NAME 2>/dev/null`` shows stdout only)."""
    return log_path.removesuffix(".log") + ".stderr.log"


def log_fds(log_path: str) -> tuple[int, int]:
    """CMD's stdout and stderr for a detached sandbox: the pipes of a log collector started for
    it (``logcollect``: times, one ordered file), or, when none can be had, the two plain files.
    Called before CMD joins its cgroup, so the collector outlives the sandbox's cgroup.kill and
    drains what CMD wrote last."""
    fds = logcollect.start(log_path)
    return fds if fds is not None else open_logs(log_path)


def open_logs(log_path: str) -> tuple[int, int]:
    """Open (append, create, close-on-exec) the stdout log and the stderr log of a detached CMD."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    out = os.open(log_path, flags, 0o600)  # root-only: CMD may print its secrets (issue 13)
    return out, os.open(stderr_path(log_path), flags, 0o600)


def _close_from(low: int, keep: int) -> None:
    """Close every inherited descriptor but ``keep`` (which closes itself on exec)."""
    top = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    os.closerange(low, keep)
    os.closerange(keep + 1, max(top, keep + 1))


def exit_code(status: int) -> int:
    """A wait status as a shell shows it: the exit code, or 128+N for death by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
