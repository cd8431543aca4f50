"""Entering another process's or container's network namespace, as ``nsenter -t PID -n`` does.

Owns two things: resolving "which namespace" (a PID, a Docker container name, a portwright
sandbox's bind mount) to a ``/proc/PID/ns/net``-style path, and reading a namespace's socket
table from a short-lived thread that has called setns(2). setns changes only the calling
thread, and that thread ends right after the read, so the caller's namespace never changes.
"""

from __future__ import annotations

import os

from ..errors import NotFound
from ..kernel import netns, sockets

# setns in a short-lived thread: shared with the engine (kernel.netns).
run_in_netns = netns.run_in


def same_netns(path: str, other: str = "/proc/self/ns/net") -> bool:
    """Do two namespace paths name the same namespace? (device and inode of the nsfs file)."""
    try:
        a, b = os.stat(path), os.stat(other)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def listeners_in(
    path: str, protos: tuple[str, ...] = ("tcp", "udp"), by_inode: dict[int, list[int]] | None = None
) -> list[sockets.Listener]:
    """The listening sockets inside the namespace at path, with the processes that hold them."""
    raw = run_in_netns(path, lambda: sockets.raw_listeners(protos))
    return sockets.attach_processes(raw, by_inode)


def pid_netns_path(pid: int) -> str:
    path = f"/proc/{pid}/ns/net"
    if not os.path.exists(f"/proc/{pid}"):
        raise NotFound(f"no process with pid {pid}; check the pid with 'ps -p {pid}'")
    try:
        os.stat(path)
    except PermissionError:
        raise netns.refused(f"reading the network namespace of pid {pid}", path) from None
    except FileNotFoundError:
        raise NotFound(f"pid {pid} exited before its network namespace could be read") from None
    return path


def netns_path_for(pid: int | None = None, container: str | None = None) -> str:
    """A /proc/PID/ns/net path for a process (``--pid``) or a Docker container (``--container``)."""
    if (pid is None) == (container is None):
        raise NotFound("give exactly one of --pid PID or --container NAME")
    if pid is not None:
        if pid <= 0:
            raise NotFound(f"pid {pid} is not a process id; give a positive pid from 'ps'")
        return pid_netns_path(pid)
    from .docker import DockerView  # late: the docker SDK is optional

    assert container is not None
    view = DockerView.connect()
    if not view.available:
        raise NotFound(f"cannot look up container {container!r}: {view.note}")
    c = view.find(container)
    if c is None:
        raise NotFound(f"no running Docker container named {container!r}; list them with 'docker ps'")
    if not c.pid:
        raise NotFound(
            f"Docker container {container!r} is not running; start it with 'docker start {container}'"
        )
    return pid_netns_path(c.pid)
