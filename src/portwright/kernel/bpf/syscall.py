"""The raw ``bpf(2)`` system call through ctypes, and ``BpfError``.

``bpf(cmd, attr, size)`` takes a ``union bpf_attr``; callers build it with ``attr(...)`` as
(offset, struct format, value) fields over a zeroed ATTR_SIZE buffer, so no ctypes Structure
mirrors the whole union. Errors carry the errno, the operation and, for loads, the verifier log.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import struct

from .consts import ATTR_SIZE, SYSCALL_NR

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A failed bpf() call: errno, what we were doing, and the verifier log when there is one."""

    def __init__(self, err: int, op: str, verifier_log: str = "") -> None:
        super().__init__(err, os.strerror(err))
        self.op = op
        self.verifier_log = verifier_log

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno or 0, str(self.errno))
        line = f"bpf {self.op}: {self.strerror} ({name})"
        log = self.verifier_log.strip()
        return f"{line}\n{log}" if log else line


def syscall_nr() -> int:
    machine = os.uname().machine  # what platform.machine() reads, without importing platform (13 ms)
    if machine not in SYSCALL_NR:
        raise BpfError(_errno.ENOSYS, f"no bpf() syscall number known for {machine}")
    return SYSCALL_NR[machine]


def attr(*fields: tuple[int, str, int | bytes]) -> ctypes.Array[ctypes.c_char]:
    """A zeroed union bpf_attr with (offset, struct format, value) fields filled in."""
    buf = ctypes.create_string_buffer(ATTR_SIZE)
    for off, fmt, value in fields:
        struct.pack_into("<" + fmt, buf, off, value)
    return buf


def addr(buf: ctypes.Array[ctypes.c_char] | ctypes.Array[ctypes.c_uint8]) -> int:
    """The address of a ctypes buffer, for the u64 pointer fields of bpf_attr."""
    return ctypes.addressof(buf)


def bpf(
    cmd: int, buf: ctypes.Array[ctypes.c_char], op: str, log: ctypes.Array[ctypes.c_char] | None = None
) -> int:
    """Run one bpf() command; returns its result (an fd for create/load/get) or raises BpfError."""
    ret = _libc.syscall(syscall_nr(), ctypes.c_int(cmd), buf, ctypes.c_uint(ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        text = log.value.decode(errors="replace") if log is not None else ""
        raise BpfError(err, op, text)
    return int(ret)
