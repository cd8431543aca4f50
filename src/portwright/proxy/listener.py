"""A TCP (or SCTP) listener as one event loop serves it: accept, open the backend connection, hand
both to a TcpRelay.

Shared by the in-process server (server.py) and the worker processes (workers.py), which both
``attach_tcp`` a listener to a loop and ``detach_tcp`` it again. A dual-stack ``[::]`` listener
relays its IPv4 clients (``::ffff:a.b.c.d``) to its IPv4 twin's backend.
"""

from __future__ import annotations

import errno
import socket

from ..model import Mapping, address_text
from . import proxyproto
from .counters import ACTIVE, ERRORS, TOTAL
from .loop import EventLoop
from .tcp import TcpRelay

#: Connections accepted per listener wake-up before other sockets get a turn.
ACCEPT_BATCH = 64


def _proto_number(proto: str) -> int:
    if proto == "tcp":
        return socket.IPPROTO_TCP
    if proto == "udp":
        return socket.IPPROTO_UDP
    return int(getattr(socket, "IPPROTO_SCTP", 132))


class Listener:
    """A TCP (or SCTP) listener as seen by one loop."""

    __slots__ = (
        "loop",
        "mapping",
        "sock",
        "ctr",
        "backend",
        "bfamily",
        "backend4",
        "bfamily4",
        "proxy_protocol",
        "bproto",
    )

    def __init__(
        self,
        loop: EventLoop,
        mapping: Mapping,
        sock: socket.socket,
        ctr: list[int],
        proxy_protocol: bool,
        twin: Mapping | None = None,
    ) -> None:
        self.loop = loop
        self.mapping = mapping
        self.sock = sock
        self.ctr = ctr
        self.backend = (address_text(mapping.container_ip), mapping.container_port)
        self.bfamily = socket.AF_INET if mapping.container_ip.version == 4 else socket.AF_INET6
        # A dual-stack [::] socket also serves its IPv4 twin: IPv4 clients (seen as ::ffff:a.b.c.d)
        # go to the twin's backend, as they would through the NAT path.
        four = twin or mapping
        self.backend4 = (address_text(four.container_ip), four.container_port)
        self.bfamily4 = socket.AF_INET if four.container_ip.version == 4 else socket.AF_INET6
        self.bproto = _proto_number(mapping.proto)
        self.proxy_protocol = proxy_protocol

    def on_event(self, fd: int, ev: int) -> None:
        lsock = self.sock
        loop = self.loop
        ctr = self.ctr
        accept = lsock._accept  # type: ignore[attr-defined]  # (fd, addr) without a socket object
        lfam, ltype, lproto = lsock.family, socket.SOCK_STREAM, lsock.proto
        bfam6, bproto, backend6 = self.bfamily, self.bproto, self.backend
        bfam4, backend4 = self.bfamily4, self.backend4
        tcp = bproto == socket.IPPROTO_TCP
        for _ in range(ACCEPT_BATCH):
            try:
                cfd, addr = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    loop.overloaded(e)
                    return
                continue  # ECONNABORTED and friends: that client is gone
            c = socket.socket(lfam, ltype, lproto, cfd)
            c.setblocking(False)
            if addr[0].startswith("::ffff:") or lfam == socket.AF_INET:
                bfam, backend = bfam4, backend4
            else:
                bfam, backend = bfam6, backend6
            try:
                b = socket.socket(bfam, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, bproto)
            except OSError as e:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                c.close()
                ctr[ERRORS] += 1
                loop.overloaded(e)
                return
            if tcp:
                b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                b.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            hdr = b""
            if self.proxy_protocol:
                hdr = proxyproto.encode("tcp", addr, c.getsockname())
            ctr[ACTIVE] += 1
            ctr[TOTAL] += 1
            relay = TcpRelay(loop, ctr, c, b, hdr)
            err = b.connect_ex(backend)
            if err and err != errno.EINPROGRESS:
                ctr[ERRORS] += 1
                loop.log_backend_error(relay, err)
                loop.handlers[relay.bfd] = relay.on_event  # abort() forgets both fds
                loop.handlers[relay.cfd] = relay.on_event
                relay.abort()
                continue
            loop.watch_relay(relay, pending=bool(err))


def attach_tcp(
    loop: EventLoop,
    m: Mapping,
    sock: socket.socket,
    ctr: list[int],
    proxy_protocol: bool,
    twin: Mapping | None,
    exclusive: bool,
) -> Listener:
    """Serve a TCP (or SCTP) listener in ``loop`` (from its thread, or before it starts).
    ``exclusive``: other loops or processes serve it too (EPOLLEXCLUSIVE: one wakes per
    connection)."""
    sock.setblocking(False)  # O_NONBLOCK is the open socket's, shared by every process serving it
    lst = Listener(loop, m, sock, ctr, proxy_protocol, twin)
    loop.listeners.append(lst)
    loop.watch(sock.fileno(), lst.on_event, level_triggered=True, exclusive=exclusive)
    return lst


def detach_tcp(loop: EventLoop, lst: Listener) -> None:
    """Stop serving a listener in ``loop`` (from its thread) and close this process's copy.

    Unregistered explicitly: another process may still hold the same open socket, and epoll
    drops a registration on close only when the last copy closes. Its relays go on."""
    fd = lst.sock.fileno()
    loop.forget(fd)
    try:
        loop.ep.unregister(fd)
    except OSError:
        pass
    if lst in loop.listeners:
        loop.listeners.remove(lst)
    lst.sock.close()
