"""The bpffs pin tree: /sys/fs/bpf mounted, and one directory per portwright state directory.

Pins live under ``/sys/fs/bpf/portwright/<hash of the state dir>/`` so that two state
directories (tests run several at once) never share or remove each other's maps and links.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil

#: Where bpffs is mounted by convention (systemd, iproute2, libbpf).
BPFFS = "/sys/fs/bpf"
#: BPF_FS_MAGIC from include/uapi/linux/magic.h.
BPF_FS_MAGIC = 0xCAFE4A11
#: Our subtree in bpffs.
PIN_PARENT = os.path.join(BPFFS, "portwright")


def is_bpffs(path: str) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            rows = [line.split() for line in f]
    except OSError:
        return False
    return any(len(r) > 2 and r[1] == path and r[2] == "bpf" for r in rows)


def ensure_mounted() -> None:
    """Mount bpffs at /sys/fs/bpf if nothing is there (mount(2) through libc; needs root)."""
    if is_bpffs(BPFFS):
        return
    os.makedirs(BPFFS, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", BPFFS.encode(), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount bpffs at {BPFFS}: {os.strerror(err)}")


def state_key(state_dir: str) -> str:
    return hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:16]


def pin_dir(state_dir: str) -> str:
    """The pin directory of one state dir (not created)."""
    return os.path.join(PIN_PARENT, state_key(state_dir))


def ensure_pin_dir(state_dir: str) -> str:
    ensure_mounted()
    path = pin_dir(state_dir)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def remove_pins(path: str) -> None:
    """Remove a pin directory and everything pinned in it (links unpinned here detach when no
    other reference holds them); then its parents up to /sys/fs/bpf/portwright while empty."""
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    parent = os.path.dirname(os.path.normpath(path))
    while parent.startswith(PIN_PARENT) and parent != BPFFS:
        try:
            os.rmdir(parent)
        except OSError:
            return
        parent = os.path.dirname(parent)
