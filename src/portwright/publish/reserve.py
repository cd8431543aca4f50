"""Host-port reservation sockets: hold a port so nothing else can take it, serve nothing.

A listening (TCP) or bound (UDP) socket with a classic-BPF filter that drops every packet, as
current Docker does: the port shows in ``ss -ntlp`` under the sandbox's portwright supervisor,
no host program can bind it, and a stray packet that NAT did not rewrite is dropped instead of
being half-accepted by a socket that would never answer (dockerd's placeholder pitfall).

The socket itself comes from ``kernel.sockets.bind_socket`` (exclusive: no SO_REUSEADDR on UDP,
no SO_REUSEPORT; see there), re-exported here for the publishers; this module adds the filter.
"""

from __future__ import annotations

import socket
import struct

from ..kernel.sockets import bind_socket

__all__ = ["SO_ATTACH_FILTER", "bind_socket", "make_placeholder"]

SO_ATTACH_FILTER = 26  # include/uapi/asm-generic/socket.h
_BPF_RET_K = 0x06  # BPF_RET | BPF_K
_DROP_ALL = struct.pack("HBBI", _BPF_RET_K, 0, 0, 0)  # one instruction: "return 0" = drop


_program: tuple[object, bytes] | None = None  # (the instruction's buffer, struct sock_fprog)


def _drop_all_program() -> bytes:
    """``struct sock_fprog`` pointing at the one instruction, built once: 10,000 reservations
    attach the same program (#11). The buffer is kept alive with it; the kernel copies the
    program at each setsockopt."""
    global _program
    if _program is None:
        import ctypes

        buf = ctypes.create_string_buffer(_DROP_ALL)
        _program = (buf, struct.pack("HL", 1, ctypes.addressof(buf)))
    return _program[1]


def _attach_drop_all(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _drop_all_program())


def make_placeholder(s: socket.socket) -> socket.socket:
    """Turn a bound socket into a drop-everything reservation."""
    _attach_drop_all(s)
    return s
