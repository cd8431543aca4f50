"""Host-port reservation sockets: hold a port so nothing else can take it, serve nothing.

A listening (TCP) or bound (UDP) socket with a classic-BPF filter that drops every packet, as
current Docker does: the port shows in ``ss -ntlp`` under the sandbox's portwright supervisor,
no host program can bind it, and a stray packet that NAT did not rewrite is dropped instead of
being half-accepted by a socket that would never answer (dockerd's placeholder pitfall).

A reservation is exclusive. UDP sockets never set SO_REUSEADDR: on UDP it lets every other
socket that sets it too bind the same address and port (and take the datagrams). TCP sets it
only to pass TIME_WAIT; it never lets two listeners share a port. Neither sets SO_REUSEPORT.
"""

from __future__ import annotations

import socket
import struct

from ..model import IPAddress

SO_ATTACH_FILTER = 26  # include/uapi/asm-generic/socket.h
_BPF_RET_K = 0x06  # BPF_RET | BPF_K
_DROP_ALL = struct.pack("HBBI", _BPF_RET_K, 0, 0, 0)  # one instruction: "return 0" = drop


def _attach_drop_all(s: socket.socket) -> None:
    import ctypes

    buf = ctypes.create_string_buffer(_DROP_ALL)
    prog = struct.pack("HL", 1, ctypes.addressof(buf))
    # The kernel copies the program during setsockopt; buf only has to outlive this call.
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
    del buf


def bind_socket(proto: str, ip: IPAddress, port: int, listen: bool = True, v6only: bool = True) -> socket.socket:
    """A socket bound to ip:port/proto, listening for stream protocols. An IPv6 socket is
    IPV6_V6ONLY unless v6only is False: then ``[::]:P`` holds the port in both families.

    Exclusive: while it is open (and listening, for TCP), no other socket can bind a clashing
    address (see the module docstring). Raises OSError (EADDRINUSE etc.) for the caller to turn into PortInUse with the owner.
    """
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    if proto == "udp":
        s = socket.socket(fam, socket.SOCK_DGRAM)
    elif proto == "sctp":
        s = socket.socket(fam, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    else:
        s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        if proto != "udp":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        s.bind((str(ip), port))
        if listen and proto != "udp":
            s.listen(4096)
    except BaseException:
        s.close()
        raise
    return s


def make_placeholder(s: socket.socket) -> socket.socket:
    """Turn a bound socket into a drop-everything reservation."""
    _attach_drop_all(s)
    return s
