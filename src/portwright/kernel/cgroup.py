"""Sandbox cgroups: every process a sandbox's CMD starts, even one that detaches with setsid, stays
in the sandbox's cgroup, so teardown kills exactly that set and nothing else.

A process group is not enough: ``setsid`` leaves it, and a pid recorded in state can be reused by an
unrelated process after a crash. A cgroup named after the sandbox id has neither problem. It lives
under ``portwright/`` in the cgroup2 hierarchy, found from /proc/self/mounts, so it works where
cgroup2 is mounted at /sys/fs/cgroup (unified) and at /sys/fs/cgroup/unified (hybrid). Without a
cgroup2 mount every function degrades to "no cgroup" and the caller falls back to process groups.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable

#: The directory under the cgroup2 root that holds one child per sandbox.
PARENT = "portwright"
#: How long teardown waits for killed processes to leave the cgroup before it gives up on rmdir.
KILL_WAIT_SECONDS = 5.0


def cgroup2_root(mounts: str = "/proc/self/mounts") -> str | None:
    """The mount point of the cgroup2 hierarchy, preferring /sys/fs/cgroup itself."""
    found = []
    try:
        with open(mounts) as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    found.append(parts[1])
    except OSError:
        return None
    if not found:
        return None
    return "/sys/fs/cgroup" if "/sys/fs/cgroup" in found else found[0]


def sandbox_path(sandbox_id: str, root: str | None = None) -> str | None:
    root = root or cgroup2_root()
    return None if root is None else os.path.join(root, PARENT, sandbox_id)


def create(sandbox_id: str) -> str | None:
    """Make the sandbox's cgroup (idempotent); None when the host has no usable cgroup2."""
    path = sandbox_path(sandbox_id)
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    return path


def join_fn(path: str | None) -> Callable[[], None]:
    """A preexec step that moves the calling (child) process into ``path`` before exec.

    It uses only os-level calls: it runs between fork and exec."""

    def join() -> None:
        if path is None:
            return
        fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    return join


def procs(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def kill(path: str | None, wait: float = KILL_WAIT_SECONDS) -> list[str]:
    """SIGKILL every process in the cgroup, wait for it to empty, remove it. Returns problems."""
    if path is None or not os.path.isdir(path):
        return []
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
    except OSError:
        for pid in procs(path):  # kernels before 5.14 have no cgroup.kill
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + wait
    while True:
        try:
            os.rmdir(path)
            return []
        except FileNotFoundError:
            return []
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                left = procs(path)
                return [f"cgroup {path}: {e.strerror}" + (f" (pids {left} remain)" if left else "")]
        time.sleep(0.01)
