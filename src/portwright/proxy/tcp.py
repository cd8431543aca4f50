"""The TCP relay: one accepted client, one backend connection, bytes moved by splice(2).

Owns the per-connection state machine that the event loops (``loop.py``) drive. It is written
for connection rate first (see DESIGN.md: per-connection cost decides a proxy's rate):

- every socket is registered once, edge-triggered, for IN|OUT|RDHUP and never modified again;
  OUT only matters after a write hit a full buffer (the ``blocked`` flag), so needless OUT bits
  cost one test, not a syscall;
- bulk bytes go socket -> pipe -> socket with ``os.splice`` (no copy into Python); a pipe is borrowed
  from a per-loop pool only while bytes are in flight, so 10,000 idle connections hold no pipes;
- small messages (requests, responses) take one recv() into a per-loop buffer and one send(): a
  short recv proves the socket drained, so no extra EAGAIN read; a read that fills the buffer
  switches the direction to splice, which then reads until EAGAIN (edge-triggered epoll reports
  no new edge for bytes already queued). A bulk direction goes back to recv/send only when a
  wake-up's first read is tiny (``SMALL_READ``): mid-stream wake-ups often find a few KiB that
  arrived while the last batch was being moved, and copying 64 KiB through Python on each of those
  cost more than the splice it replaced;
- EOF in one direction becomes ``shutdown(SHUT_WR)`` toward the peer, the other keeps flowing
  (the second EOF needs no shutdown: ``close()`` sends that FIN after the queued bytes);
- a backend that refuses (or any reset) is passed on as a reset (SO_LINGER 0), never a clean EOF,
  also when it arrives on a direction that is waiting for its destination to drain (EPOLLERR);
- backpressure: when the destination is full the bytes stay in the (bounded) pipe and the source
  is not read again until the destination drains, so the sender's TCP window closes;
- while the backend connect is pending, the client is still watched: a client that hangs up (or
  sends FIN without having sent a byte) releases both sockets at once (``abandoned``), and a
  connect that outlives the loop's connect timeout resets the client (``connect_timeouts``);
- a pipe goes back to the pool only when the kernel reports it empty (``PipePool.put``), so bytes
  left behind by an aborted relay can never reach another connection.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
import termios
from typing import TYPE_CHECKING

from .counters import (
    ABANDONED,
    ACTIVE,
    BYTES_IN,
    BYTES_OUT,
    CONNECT_TIMEOUTS,
    COUNTER_NAMES,
    ERRORS,
    TOTAL,
    UDP_DROPPED,
    UDP_FLOWS,
)

if TYPE_CHECKING:
    from .loop import EventLoop

# The counter slots used to live here; kept importable from this module for old callers.
__all__ = [
    "ACTIVE",
    "BYTES_IN",
    "BYTES_OUT",
    "COPY_SIZE",
    "COUNTER_NAMES",
    "ERRORS",
    "PIPE_SIZE",
    "RELAY_EVENTS",
    "TOTAL",
    "UDP_DROPPED",
    "UDP_FLOWS",
    "PipePool",
    "RelayError",
    "TcpRelay",
]

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
EPOLLRDHUP = select.EPOLLRDHUP
EPOLLET = select.EPOLLET
#: Every relayed socket is registered with this mask exactly once.
RELAY_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
_READ_EV = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR
_EOF_EV = EPOLLRDHUP | EPOLLHUP | EPOLLERR

#: Pipe capacity. Larger pipes move more per splice call on bulk transfers; pages are allocated
#: only as bytes arrive, so an idle pooled pipe costs almost nothing.
PIPE_SIZE = 1 << 20
#: The small-message path copies through one buffer of this size per loop; a read that fills it
#: switches that direction to splice.
COPY_SIZE = 1 << 16
#: A direction in splice mode returns to the small-message path when the first read of a wake-up
#: brings less than this (a request after a download); anything bigger keeps splicing.
SMALL_READ = 4096
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_LINGER_RESET = struct.pack("ii", 1, 0)
_splice = os.splice


class PipePool:
    """Reusable non-blocking pipes of ``PIPE_SIZE``.

    A pipe comes back to the pool only when the kernel says it is empty (FIONREAD on its read
    end), whatever its borrower believed: a pipe handed out with bytes still inside would send one
    connection's bytes ahead of the next one's. Anything else is closed.
    """

    __slots__ = ("free", "cap", "size", "_nread")

    def __init__(self, cap: int = 64, size: int = PIPE_SIZE) -> None:
        self.free: list[tuple[int, int]] = []
        self.cap = cap
        self.size = size
        self._nread = bytearray(4)  # FIONREAD's int, reused (one pool per loop thread)

    def get(self) -> tuple[int, int]:
        if self.free:
            return self.free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self.size)
        except OSError:
            pass  # above fs.pipe-max-size without CAP_SYS_RESOURCE: the default 64 KiB still works
        return r, w

    def put(self, pipe: tuple[int, int]) -> None:
        """Keep ``pipe`` for reuse if it is provably empty and the pool has room; else close it."""
        if len(self.free) < self.cap:
            try:
                fcntl.ioctl(pipe[0], termios.FIONREAD, self._nread, True)
                empty = self._nread == b"\0\0\0\0"
            except OSError:
                empty = False
            if empty:
                self.free.append(pipe)
                return
        os.close(pipe[0])
        os.close(pipe[1])

    def close(self) -> None:
        while self.free:
            r, w = self.free.pop()
            os.close(r)
            os.close(w)


class Half:
    """One direction of a relay: src socket -> (pipe) -> dst socket."""

    __slots__ = (
        "src",
        "dst",
        "ssock",
        "dsock",
        "pipe",
        "fill",
        "pend",
        "bulk",
        "blocked",
        "eof",
        "done",
        "slot",
    )

    def __init__(self, src: int, dst: int, ssock: socket.socket, dsock: socket.socket, slot: int) -> None:
        self.src = src
        self.dst = dst
        self.ssock = ssock
        self.dsock = dsock
        self.pend = b""  # bytes read with recv() that dst did not take yet (small-message path)
        self.bulk = False  # the last read filled the copy buffer: use splice until it runs short
        self.pipe: tuple[int, int] | None = None
        self.fill = 0  # bytes sitting in the pipe, not yet written to dst
        self.blocked = False  # dst was full; wait for its OUT edge
        self.eof = False  # src sent FIN
        self.done = False  # FIN passed on to dst
        self.slot = slot  # BYTES_IN or BYTES_OUT


class RelayError(Exception):
    """A socket of the relay failed (reset, broken pipe): the relay is aborted."""


class TcpRelay:
    """A client socket and its backend, relayed in both directions inside one event loop."""

    __slots__ = ("loop", "ctr", "c", "b", "cfd", "bfd", "up", "down", "connected", "hdr", "c_ready", "closed")

    def __init__(
        self, loop: EventLoop, ctr: list[int], client: socket.socket, backend: socket.socket, header: bytes
    ) -> None:
        self.loop = loop
        self.ctr = ctr
        self.c = client
        self.b = backend
        self.cfd = client.fileno()
        self.bfd = backend.fileno()
        self.up = Half(self.cfd, self.bfd, client, backend, BYTES_IN)
        self.down = Half(self.bfd, self.cfd, backend, client, BYTES_OUT)
        self.connected = False
        self.hdr = header  # PROXY header still to send, b"" when none
        # client bytes arrived before the backend connection completed: 1, and 2 once its FIN
        # (or a hang-up) was reported too: the first read after connect must then drain to EOF,
        # otherwise one short recv() proves the socket empty (no EAGAIN probe)
        self.c_ready = 0
        self.closed = False

    # -- event entry point ---------------------------------------------------------------------
    def on_event(self, fd: int, ev: int) -> None:
        try:
            if fd == self.cfd:
                if ev & _READ_EV:
                    if self.connected and not self.hdr:
                        if not self.up.blocked:
                            self._pump(self.up, ev & _EOF_EV)
                        elif ev & EPOLLERR:
                            # A reset (or timeout) while this direction waits for the backend to
                            # drain: nobody would read the client again to see it, so end here.
                            raise RelayError("client connection failed")
                    else:
                        self.c_ready = 2 if ev & _EOF_EV else (self.c_ready or 1)
                        if ev & EPOLLERR:
                            self._client_error()
                            return
                        if ev & _EOF_EV and not self.connected and self._client_left(ev):
                            return
                if ev & EPOLLOUT and self.down.blocked:
                    self._pump(self.down)
            else:
                if not self.connected:
                    if not ev & (EPOLLOUT | EPOLLERR | EPOLLHUP):
                        return
                    if not self._finish_connect():
                        return
                    if self.c_ready or self.hdr:
                        self._pump(self.up, self.c_ready != 1)
                elif ev & EPOLLOUT and self.up.blocked:
                    self._pump(self.up)
                if ev & _READ_EV:
                    if not self.down.blocked:
                        self._pump(self.down, ev & _EOF_EV)
                    elif ev & EPOLLERR:  # the mirror case: the backend failed while the client is full
                        raise RelayError("backend connection failed")
            if self.up.done and self.down.done:
                self.close()
        except RelayError:
            self.abort()

    # -- connection setup ----------------------------------------------------------------------
    def _finish_connect(self) -> bool:
        err = self.b.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            # Backend refused, unreachable or gone: the client must see a reset, not an EOF, so
            # that it knows nothing was served (Docker #38682).
            self.ctr[ERRORS] += 1
            self.loop.log_backend_error(self, err)
            self.abort()
            return False
        self.connected = True
        if self.hdr:
            try:
                n = self.b.send(self.hdr)
            except BlockingIOError:
                n = 0
            except OSError as e:
                raise RelayError(str(e)) from e
            self.hdr = self.hdr[n:]
            if self.hdr:
                self.up.blocked = True
        return True

    def _client_error(self) -> None:
        if not self.connected:
            self.ctr[ABANDONED] += 1
        self.abort()

    def _client_left(self, ev: int) -> bool:
        """The client hung up while the backend connect is still pending: release both now.

        A hang-up (HUP: both directions closed, or a reset) always counts. A FIN alone counts only
        when the client sent nothing before it: a client that wrote a request and then half-closed
        (``nc -N``) still waits for the answer, and the connect timeout bounds how long it may."""
        if not ev & EPOLLHUP:
            try:
                fcntl.ioctl(self.cfd, termios.FIONREAD, self.loop.nread, True)
            except OSError:
                pass
            else:
                if self.loop.nread != b"\0\0\0\0":
                    return False  # a request is waiting: deliver it once connected
        self.ctr[ABANDONED] += 1
        self.abort()
        return True

    def expire(self) -> None:
        """The connect timeout passed (loop.py): the client gets a reset, the connect is dropped."""
        if not self.connected and not self.closed:
            self.ctr[CONNECT_TIMEOUTS] += 1
            self.abort()

    # -- data path -----------------------------------------------------------------------------
    def _pump(self, h: Half, drain: int = 1) -> None:
        """Move what src has to dst until src is drained, dst is full, or src hit EOF.

        ``drain`` false means "this is a plain IN edge": a short read then ends the work.
        """
        if self.hdr and h is self.up and not self._send_header(h):
            return  # a PROXY header is still partly unsent: it goes first
        ctr = self.ctr
        try:
            if h.pend:
                try:
                    m = h.dsock.send(h.pend)
                except BlockingIOError:
                    h.blocked = True
                    return
                ctr[h.slot] += m
                h.pend = h.pend[m:]
                if h.pend:
                    h.blocked = True
                    return
            if h.fill:
                pipe = h.pipe
                assert pipe is not None
                try:
                    m = _splice(pipe[0], h.dst, h.fill, None, None, SPLICE_FLAGS)
                except BlockingIOError:
                    h.blocked = True
                    return
                h.fill -= m
                ctr[h.slot] += m
                if h.fill:
                    h.blocked = True
                    return
            h.blocked = False
            if not h.eof and not h.bulk:
                # Small-message path (requests, responses, keep-alive): recv into the loop's
                # buffer and send. recv() empties the receive queue up to the buffer size, so a
                # read shorter than the buffer proves no data is left and saves the EAGAIN probe;
                # only a FIN already announced by this wake-up (``drain``) needs one more read.
                loop = self.loop
                recv_into, send, buf, view = h.ssock.recv_into, h.dsock.send, loop.buf, loop.view
                while True:
                    try:
                        n = recv_into(buf)
                    except BlockingIOError:
                        break
                    if n == 0:
                        h.eof = True
                        break
                    try:
                        m = send(view[:n])
                    except BlockingIOError:
                        m = 0
                    ctr[h.slot] += m
                    if m < n:
                        h.pend = bytes(view[m:n])
                        h.blocked = True
                        return
                    if n == COPY_SIZE:
                        h.bulk = True  # more is queued: switch to splice below
                        break
                    if not drain:
                        break
            if not h.eof and h.bulk and self._splice_bulk(h):
                return
            if h.eof and not h.done:
                if (self.down if h is self.up else self.up).done:
                    # The other direction is finished too: close() (on_event's next step) sends
                    # this FIN after the queued bytes, so the shutdown() syscall is not needed.
                    h.done = True
                else:
                    self._pass_eof(h)
        except OSError as e:
            raise RelayError(str(e)) from e
        if h.pipe is not None:
            self.loop.pipes.put(h.pipe)
            h.pipe = None

    def _send_header(self, h: Half) -> bool:
        """Send what is left of the PROXY header; True once all of it is out."""
        try:
            n = h.dsock.send(self.hdr)
        except BlockingIOError:
            return False
        except OSError as e:
            raise RelayError(str(e)) from e
        self.hdr = self.hdr[n:]
        if self.hdr:
            return False
        h.blocked = False
        return True

    def _splice_bulk(self, h: Half) -> bool:
        """Splice src -> pipe -> dst until src runs dry (False) or dst is full (True: blocked,
        the bytes stay in the half's pipe). Raises OSError for the caller to abort on."""
        ctr = self.ctr
        pipe = h.pipe
        if pipe is None:
            pipe = h.pipe = self.loop.pipes.get()
        src, dst, pr, pw = h.src, h.dst, pipe[0], pipe[1]
        first = True
        while True:
            try:
                n = _splice(src, pw, PIPE_SIZE, None, None, SPLICE_FLAGS)
            except BlockingIOError:
                return False
            if n == 0:
                h.eof = True
                return False
            if first:
                first = False
                if n < SMALL_READ:
                    h.bulk = False  # the stream went quiet: back to recv/send next time
            # Record the bytes now in the pipe before moving them on: if the next splice fails
            # (reset, broken pipe) the relay is aborted with fill telling the truth.
            h.fill = n
            try:
                m = _splice(pr, dst, n, None, None, SPLICE_FLAGS)
            except BlockingIOError:
                m = 0
            ctr[h.slot] += m
            h.fill = n - m
            if m < n:
                h.blocked = True
                return True
            # Read until EAGAIN: a non-blocking splice stops when the pipe runs out of slots,
            # possibly far below PIPE_SIZE while the socket still holds data, and edge-triggered
            # epoll would never report those bytes again.

    @staticmethod
    def _pass_eof(h: Half) -> None:
        """src sent FIN and everything before it reached dst: pass the FIN on."""
        h.done = True
        try:
            h.dsock.shutdown(socket.SHUT_WR)
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                raise

    # -- teardown ------------------------------------------------------------------------------
    def abort(self) -> None:
        """Reset both sides (SO_LINGER 0) and forget the relay."""
        if self.closed:
            return
        for s in (self.c, self.b):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self.loop
        loop.forget(self.cfd)
        loop.forget(self.bfd)
        self.ctr[ACTIVE] -= 1
        for h in (self.up, self.down):
            if h.pipe is not None:
                loop.pipes.put(h.pipe)  # closed instead of pooled if bytes are still inside
                h.pipe = None
        self.c.close()
        self.b.close()
