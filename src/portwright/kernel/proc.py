"""Process identity: the short name (comm) that ps, top and ``ss -p`` show, every process's
command line (``argvs``) for finding processes by what they run, and a process's children.

Every long-lived portwright process names itself, so that whoever reads ``ss -ntlp`` sees who
holds a port: the supervisor ("portwright"), the docker-proxy drop-in, the CNI port holder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

PR_SET_NAME = 15  # include/uapi/linux/prctl.h
PR_SET_CHILD_SUBREAPER = 36  # include/uapi/linux/prctl.h
PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h
COMM_MAX = 15  # TASK_COMM_LEN - 1: the kernel keeps only this many bytes


def set_process_name(name: str) -> None:
    """This thread's comm, as prctl(PR_SET_NAME) sets it: best effort, a failure changes nothing
    else. Written to /proc/thread-self/comm, without ctypes (0.2 MB resident in the shared relay)."""
    try:
        with open("/proc/thread-self/comm", "wb") as f:
            f.write(name.encode()[:COMM_MAX])
    except OSError:
        pass


def set_process_title(title: str) -> None:
    """What /proc/PID/cmdline (``ps``, ``ss -p``'s readers) shows for this process. A supervisor
    forked from the fork server would otherwise show the server's command line; this names the
    sandbox instead. Uses setproctitle when installed; a no-op otherwise."""
    try:
        import setproctitle
    except ImportError:
        return
    try:
        with open("/proc/self/comm") as f:
            comm = f.read().strip()
    except OSError:
        comm = ""
    setproctitle.setproctitle(title)
    if comm:
        set_process_name(comm)  # setproctitle renames comm too; ss -p and ps -o comm keep the short name


def set_child_subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants become this process's children (not
    init's), so it can wait for a CMD that another of its children started."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def set_parent_death_signal(signum: int) -> None:
    """prctl(PR_SET_PDEATHSIG): the kernel sends ``signum`` when the parent exits; it survives exec."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def comm(pid: int) -> str | None:
    """``pid``'s short name (what ps shows); None when the process is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def children(pid: int) -> list[int] | None:
    """The pids of ``pid``'s children (its main thread's, as /proc lists them); None when the
    process is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(k) for k in f.read().split()]
    except OSError:
        return None


def argv(pid: int) -> list[bytes] | None:
    """The command line of ``pid``, split at NULs (the trailing NUL leaves a last empty item);
    None when the process is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def argv_text(pid: int) -> str | None:
    """``pid``'s command line as one line of text, words joined by single spaces."""
    args = argv(pid)
    return None if args is None else " ".join(b" ".join(args).decode(errors="replace").split())


def argvs() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, argv) of every process readable now; one that exits meanwhile is skipped."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            args = argv(int(entry))
            if args is not None:
                yield int(entry), args
