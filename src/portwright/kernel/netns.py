"""Entering network namespaces: setns(2) through libc (Python 3.11 has no os.setns).

setns applies to the calling thread only, so it is used in a forked child (preexec) or a
dedicated short-lived thread, never on a long-lived thread that serves other work.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from ..errors import KernelError, NeedRoot, NotFound, PortwrightError

CLONE_NEWNET = 0x40000000


def refused(what: str, path: str) -> PortwrightError:
    """The error for a namespace the kernel would not let us read or enter: NeedRoot when we are
    not root; as root, sudo would not help, so say what does stand in the way."""
    if os.geteuid() != 0:
        return NeedRoot(what)
    return KernelError(
        what,
        f"permission denied to root for {path}: a security module (AppArmor, SELinux, Yama) or a "
        "user namespace without CAP_SYS_ADMIN over that process forbids it; see 'dmesg' for the denial",
        errno.EPERM,
    )


# The process's own symbols, libc's among them: find_library("c") ran `ldconfig -p` at every import.
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def setns(path: str) -> None:
    """Move the calling thread into the network namespace at path (a /run/netns bind mount or
    /proc/PID/ns/net)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise refused(f"opening the network namespace {path}", path) from None
    except FileNotFoundError:
        raise NotFound(f"network namespace {path} does not exist; the process or sandbox has gone") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            if err == errno.EPERM:
                raise refused(f"entering the network namespace {path}", path)
            raise KernelError(f"setns({path})", os.strerror(err), err)
    finally:
        os.close(fd)


def preexec_enter(path: str) -> Callable[[], None]:
    """A subprocess preexec_fn that moves the child into the namespace at path."""

    def enter() -> None:
        setns(path)
        os.setsid()

    return enter


def run_in(path: str, fn: Callable[[], T]) -> T:
    """Run fn in a fresh thread that has entered the namespace at path; return its result."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            setns(path)
            box["result"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name="pw-netns", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


# What ``ip netns exec`` does for /etc (ip-netns(8)): files in /etc/netns/NAME are bind-mounted over
# their namesakes in /etc, in a mount namespace of the process's own. Constants from linux/sched.h
# and linux/mount.h.
CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19  # mounts made later on the host still reach us; ours never reach the host
NETNS_ETC = "/etc/netns"


def bind_etc(netns_path: str) -> None:
    """Give the calling process (a child about to exec) the namespace's own /etc files, such as the
    resolv.conf portwright writes for a sandbox. Nothing happens when /etc/netns/NAME is absent."""
    d = os.path.join(NETNS_ETC, os.path.basename(netns_path))
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return
    if not names:
        return
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise KernelError("unshare(CLONE_NEWNS)", os.strerror(ctypes.get_errno()))
    if _libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None) != 0:
        raise KernelError("mount --make-rslave /", os.strerror(ctypes.get_errno()))
    for name in names:
        src, dst = os.path.join(d, name), os.path.join("/etc", name)
        if not os.path.exists(dst) or name.startswith("."):
            continue
        if _libc.mount(src.encode(), dst.encode(), None, MS_BIND, None) != 0:
            raise KernelError(f"mount --bind {src} {dst}", os.strerror(ctypes.get_errno()))
