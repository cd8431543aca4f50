"""The per-attachment holder process: host-port reservations and the ``::1`` relay.

A CNI plugin exits after ADD, but a reservation is a socket and must outlive it. So ADD starts
one small detached process per attachment. It binds each published host port (TCP listening,
UDP bound) with a drop-everything socket filter, as Docker's current placeholder does: no other
program can take the port, yet the socket never accepts a connection, because kernel NAT moves
the traffic to the container before it reaches the socket. Mappings the kernel cannot NAT
(``[::1]``: IPv6 has no route_localnet) are served here by a small TCP relay instead.

The process is found again without any state file: its command line carries the owner tag
``cni:<containerID>:<ifname>``, and DEL/GC kill it by pid after reading /proc.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import selectors
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass

HOLDER_MODULE = "portwright.cni.holder"
# Kernel ABI: SO_ATTACH_FILTER (asm-generic/socket.h) with one classic-BPF "ret #0" instruction
# (BPF_RET | BPF_K == 0x06, k=0): accept zero bytes of every packet, i.e. drop them all.
SO_ATTACH_FILTER = 26
BPF_RET_K = 0x06
# prctl(PR_SET_NAME): the 15-character comm shown by ps/top, so an operator sees who holds it.
PR_SET_NAME = 15
COMM = b"pw-cni-holder"
RELAY_BUFSIZE = 65536
RELAY_BACKLOG = 128


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


_DROP_ALL = (_SockFilter * 1)(_SockFilter(BPF_RET_K, 0, 0, 0))
_DROP_PROG = _SockFprog(1, ctypes.cast(_DROP_ALL, ctypes.POINTER(_SockFilter)))


@dataclass(frozen=True, slots=True)
class Binding:
    """One host socket the holder opens: a placeholder, or a relay listener when ``to`` is set."""

    proto: str
    ip: str
    port: int
    to_ip: str = ""
    to_port: int = 0

    @property
    def text(self) -> str:
        h = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{h}:{self.port}/{self.proto}"

    def to_json(self) -> dict[str, object]:
        return {"proto": self.proto, "ip": self.ip, "port": self.port, "to_ip": self.to_ip,
                "to_port": self.to_port}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Binding:
        return cls(str(d["proto"]), str(d["ip"]), int(str(d["port"])), str(d.get("to_ip", "")),
                   int(str(d.get("to_port", 0))))


def open_socket(b: Binding, drop_all: bool) -> socket.socket:
    """Bind (and for TCP listen on) ``b``; raises OSError with the kernel's errno."""
    fam = socket.AF_INET6 if ":" in b.ip else socket.AF_INET
    if b.proto == "tcp":
        s = socket.socket(fam, socket.SOCK_STREAM)
    elif b.proto == "udp":
        s = socket.socket(fam, socket.SOCK_DGRAM)
    else:
        s = socket.socket(fam, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    try:
        if fam == socket.AF_INET6:
            # A wildcard [::] reservation must not also claim IPv4; that is the v4 half's job.
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if drop_all:
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(_DROP_PROG))
        s.bind((b.ip, b.port))
        if b.proto != "udp":
            s.listen(RELAY_BACKLOG)
    except OSError:
        s.close()
        raise
    return s


class Relay:
    """A single-threaded TCP relay for the bindings NAT cannot serve (e.g. ``[::1]``).

    One selector, non-blocking sockets, a bounded buffer per direction and explicit half-close:
    when one side finishes sending, the other side's write half is shut down once the data
    before it has drained. It carries only one attachment's loopback traffic, so it favours
    clarity over raw speed.
    """

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.listeners: dict[socket.socket, Binding] = {}
        self.peer: dict[socket.socket, socket.socket] = {}
        self.outbuf: dict[socket.socket, bytearray] = {}  # bytes waiting to be written to the socket
        self.read_done: set[socket.socket] = set()  # sockets that have sent EOF
        self.mask: dict[socket.socket, int] = {}  # current selector registration

    def add_listener(self, s: socket.socket, b: Binding) -> None:
        s.setblocking(False)
        self.listeners[s] = b
        self.sel.register(s, selectors.EVENT_READ)

    def connections(self) -> int:
        return len(self.peer) // 2

    def _set_events(self, s: socket.socket) -> None:
        if s not in self.peer:
            return
        ev = 0
        if s not in self.read_done and len(self.outbuf[self.peer[s]]) < RELAY_BUFSIZE:
            ev |= selectors.EVENT_READ
        if self.outbuf[s]:
            ev |= selectors.EVENT_WRITE
        old = self.mask.get(s, 0)
        if ev == old:
            return
        if not ev:
            self.sel.unregister(s)
            del self.mask[s]
        elif not old:
            self.sel.register(s, ev)
            self.mask[s] = ev
        else:
            self.sel.modify(s, ev)
            self.mask[s] = ev

    def _close_pair(self, s: socket.socket) -> None:
        for x in (s, self.peer.get(s)):
            if x is None or x not in self.peer:
                continue
            if x in self.mask:
                self.sel.unregister(x)
                del self.mask[x]
            del self.peer[x]
            del self.outbuf[x]
            self.read_done.discard(x)
            x.close()

    def _accept(self, ls: socket.socket, b: Binding) -> None:
        try:
            client, _ = ls.accept()
        except (BlockingIOError, InterruptedError):
            return
        fam = socket.AF_INET6 if ":" in b.to_ip else socket.AF_INET
        upstream = socket.socket(fam, socket.SOCK_STREAM)
        upstream.setblocking(False)
        client.setblocking(False)
        try:
            upstream.connect((b.to_ip, b.to_port))
        except BlockingIOError:
            pass  # completes asynchronously; the first send or recv reports a failure
        except OSError:
            client.close()
            upstream.close()
            return
        for a, z in ((client, upstream), (upstream, client)):
            self.peer[a] = z
            self.outbuf[a] = bytearray()
        self._set_events(client)
        self._set_events(upstream)

    def _finish_if_done(self, s: socket.socket) -> None:
        peer = self.peer[s]
        if s in self.read_done and peer in self.read_done and not self.outbuf[s] and not self.outbuf[peer]:
            self._close_pair(s)

    def _read(self, s: socket.socket) -> None:
        peer = self.peer[s]
        try:
            data = s.recv(RELAY_BUFSIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_pair(s)
            return
        if data:
            self.outbuf[peer] += data
            self._write(peer)
        else:
            self.read_done.add(s)
            if not self.outbuf[peer]:
                self._shutdown_write(peer)
        if s in self.peer:
            self._set_events(s)
            self._finish_if_done(s)

    def _shutdown_write(self, s: socket.socket) -> None:
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _write(self, s: socket.socket) -> None:
        buf = self.outbuf[s]
        if buf:
            try:
                del buf[:s.send(buf)]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close_pair(s)
                return
        if not buf and self.peer[s] in self.read_done:
            self._shutdown_write(s)
        self._set_events(s)
        self._set_events(self.peer[s])  # its reads may resume now that the buffer drained
        self._finish_if_done(s)

    def run_once(self, timeout: float | None) -> None:
        for key, mask in self.sel.select(timeout):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if s in self.listeners:
                self._accept(s, self.listeners[s])
                continue
            if s in self.peer and mask & selectors.EVENT_WRITE:
                self._write(s)
            if s in self.peer and mask & selectors.EVENT_READ:
                self._read(s)


def _set_comm() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(COMM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=HOLDER_MODULE, description="portwright CNI port holder")
    p.add_argument("--owner", required=True, help="owner tag cni:<containerID>:<ifname>")
    p.add_argument("--network", default="", help="CNI network name (for operators)")
    p.add_argument("--ready-fd", type=int, required=True)
    p.add_argument("--bindings", required=True, help="JSON list of bindings")
    a = p.parse_args(argv)
    _set_comm()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    bindings = [Binding.from_json(d) for d in json.loads(a.bindings)]
    ready = os.fdopen(a.ready_fd, "w")
    held: list[socket.socket] = []
    relay = Relay()
    for b in bindings:
        try:
            s = open_socket(b, drop_all=not b.to_ip)
        except OSError as e:
            code = errno.errorcode.get(e.errno or 0, str(e.errno))
            ready.write(f"ERR {code} {b.text} {e.strerror}\n")
            ready.close()
            return 1
        held.append(s)
        if b.to_ip:
            relay.add_listener(s, b)
    ready.write("OK\n")
    ready.close()
    while True:
        if relay.listeners:
            relay.run_once(None)
        else:
            signal.pause()


def holder_pids(owner: str | None = None, proc: str = "/proc") -> Iterator[tuple[int, str]]:
    """(pid, owner tag) of every live holder, optionally only those of ``owner``."""
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if HOLDER_MODULE.encode() not in args:
            continue
        try:
            tag = args[args.index(b"--owner") + 1].decode()
        except (ValueError, IndexError):
            continue
        if owner is None or tag == owner:
            yield int(entry), tag


if __name__ == "__main__":
    sys.exit(main())
