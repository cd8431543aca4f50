"""BPF programs: load (with the verifier log in every error), pin and reopen (``Program``)."""

from __future__ import annotations

import ctypes
import os

from . import consts as c
from .maps import _name, get_pinned, pin_fd
from .syscall import BpfError, addr, attr, bpf


class Program:
    def __init__(self, fd: int, name: str = "") -> None:
        self.fd = fd
        self.name = name

    @classmethod
    def load(
        cls, prog_type: int, insns: bytes, expected_attach_type: int = 0, name: str = "", license: str = "GPL"
    ) -> Program:
        """Load a program. The first attempt runs without a log (fast); on failure it is loaded
        again with log_level 1 so the error carries the verifier's reasons."""
        if len(insns) % 8:
            raise ValueError(f"program {name}: {len(insns)} bytes is not a whole number of instructions")
        code = ctypes.create_string_buffer(insns, len(insns))
        lic = ctypes.create_string_buffer(license.encode())
        base: list[tuple[int, str, int | bytes]] = [
            (0, "I", prog_type),
            (4, "I", len(insns) // 8),
            (8, "Q", addr(code)),
            (16, "Q", addr(lic)),
            (48, "16s", _name(name)),
            (68, "I", expected_attach_type),
        ]
        try:
            return cls(bpf(c.BPF_PROG_LOAD, attr(*base), f"load program {name}"), name)
        except BpfError as first:
            log = ctypes.create_string_buffer(c.LOG_SIZE)
            with_log = [*base, (24, "I", 1), (28, "I", c.LOG_SIZE), (32, "Q", addr(log))]
            try:
                fd = bpf(c.BPF_PROG_LOAD, attr(*with_log), f"load program {name}", log)
            except BpfError as e:
                if e.errno == 28 and first.errno != 28:  # ENOSPC: the log overflowed, keep the first error
                    raise BpfError(first.errno or 0, first.op, e.verifier_log) from None
                raise
            return cls(fd, name)  # loaded on the second attempt (a transient failure)

    @classmethod
    def open_pinned(cls, path: str) -> Program:
        return cls(get_pinned(path, "program"), os.path.basename(path))

    def pin(self, path: str) -> None:
        pin_fd(self.fd, path, f"program {self.name}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Program:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
