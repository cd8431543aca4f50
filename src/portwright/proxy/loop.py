"""The proxy's event loop: one epoll loop in its own thread, and what every relay asks of it.

Owns the loop's registrations (``watch``, ``watch_relay``, ``forget``: an fd forgotten before it
is closed is skipped for the rest of that wake-up, so a reused fd number never reaches the wrong
handler), the per-loop resources the relays borrow (the pipe pool and the small-message copy
buffer, used only by this thread), the backend connect timeout (``connecting``), the UDP flow sweep (once a second, in loop 0 when it has UDP
listeners), the housekeeping ``tick`` (once a second, or earlier at ``soon``), rate-limited
logging for overload and backend failures, and the loop's end: a crash
is recorded (``crashed``, reported by the server) and every relay, flow and pipe is closed.

One bad connection never stops the loop: a handler that raises is logged and, if it was a TCP
relay's, that relay is aborted. The server (``server.py``) creates the loops and their listeners;
the relays live in ``tcp.py`` and ``udp.py``; the counters in ``counters.py``.
"""

from __future__ import annotations

import collections
import os
import select
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import plog
from .tcp import COPY_SIZE, RELAY_EVENTS, PipePool, TcpRelay

if TYPE_CHECKING:
    from .udp import UdpListener

log = plog.get("portwright.proxy")  # logging is imported only when something is logged

Handler = Callable[[int, int], None]
#: Seconds between sweeps of idle UDP flows (and the longest epoll wait of a loop with UDP).
SWEEP_EVERY = 1.0
#: Seconds a backend connect may take before the client gets a reset (--proxy-connect-timeout).
#: A SYN to a backend whose accept queue is full is retried by the kernel for minutes; the client
#: (or its user) gave up long before.
CONNECT_TIMEOUT = 10.0


class EventLoop:
    """One epoll loop in its own thread."""

    def __init__(self, index: int, name: str, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.index = index
        self.connect_timeout = connect_timeout
        # (deadline, relay) of backend connects still pending, oldest first (one timeout per loop,
        # so appending keeps the order); connected or closed relays are dropped from the front.
        self.connecting: collections.deque[tuple[float, TcpRelay]] = collections.deque()
        self.nread = bytearray(4)  # FIONREAD's int, reused (this thread only)
        self.ep = select.epoll()
        self.handlers: dict[int, Handler] = {}
        self.stale: set[int] = set()
        self.pipes = PipePool()
        self.buf = bytearray(COPY_SIZE)  # the small-message path's copy buffer (this thread only)
        self.view = memoryview(self.buf)
        self.udp: list[UdpListener] = []
        self.listeners: list[object] = []  # the TCP listeners registered in this loop
        self.now = time.monotonic()
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.ep.register(self._wake_r, select.EPOLLIN)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._last_log = 0.0
        self.crashed: BaseException | None = None
        #: Called about once a second from the loop's thread (the shared relay's housekeeping);
        #: set before the loop starts.
        self.tick: Callable[[float], None] | None = None
        #: A monotonic time at which ``tick`` should run early (0: none), set from the loop's
        #: thread: the shared relay hands new ports to its workers in batches this way.
        self.soon = 0.0

    # registration helpers (called from the loop thread, or before the thread starts)
    def watch(
        self, fd: int, handler: Handler, level_triggered: bool = False, exclusive: bool = False
    ) -> None:
        mask = select.EPOLLIN
        if not level_triggered:
            mask |= select.EPOLLET
        if exclusive:
            mask |= select.EPOLLEXCLUSIVE
        self.handlers[fd] = handler
        self.ep.register(fd, mask)

    def watch_relay(self, relay: TcpRelay, pending: bool = False) -> None:
        """Register both sockets of a relay; ``pending``: its backend connect is in progress."""
        if pending:
            self.connecting.append((time.monotonic() + self.connect_timeout, relay))
        h = relay.on_event
        self.handlers[relay.cfd] = h
        self.handlers[relay.bfd] = h
        self.ep.register(relay.cfd, RELAY_EVENTS)
        self.ep.register(relay.bfd, RELAY_EVENTS)

    def forget(self, fd: int) -> None:
        """Called before the fd is closed (close() removes it from epoll by itself)."""
        if self.handlers.pop(fd, None) is not None:
            self.stale.add(fd)

    def overloaded(self, e: OSError) -> None:
        self._rate_log(plog.WARNING, "proxy cannot take more connections now: %s", e.strerror)

    def log_backend_error(self, relay: TcpRelay, err: int) -> None:
        self._rate_log(plog.INFO, "backend connection failed (%s); client reset", os.strerror(err))

    def flows_full(self, listener: UdpListener) -> None:
        self._rate_log(
            plog.WARNING,
            "%s: %d UDP flows, the most allowed; dropping datagrams from new clients until flows expire",
            listener.mapping.docker_format(),
            listener.max_flows,
        )

    def _rate_log(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log >= 1.0:
            self._last_log = now
            log.log(level, msg, *args)

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _run(self) -> None:
        poll = self.ep.poll
        handlers = self.handlers
        stale = self.stale
        wake_fd = self._wake_r
        udp = self.udp
        tick = self.tick
        periodic = bool(udp) or tick is not None  # the shared relay adds UDP listeners later
        timeout = SWEEP_EVERY if periodic else -1.0
        next_sweep = time.monotonic() + SWEEP_EVERY
        connecting = self.connecting
        try:
            while not self.stopping:
                wait = timeout
                if connecting:
                    wait = self._expire(timeout)
                if self.soon:
                    left = max(0.0, self.soon - time.monotonic())
                    wait = left if wait < 0 else min(wait, left)
                events = poll(wait)
                if periodic:
                    self.now = now = time.monotonic()
                    if now >= next_sweep:
                        next_sweep = now + SWEEP_EVERY
                        for u in udp:
                            u.sweep(now)
                        if tick is not None:
                            tick(now)
                    elif self.soon and now >= self.soon and tick is not None:
                        self.soon = 0.0
                        tick(now)
                for fd, ev in events:
                    if stale and fd in stale:
                        continue
                    h = handlers.get(fd)
                    if h is not None:
                        try:
                            h(fd, ev)
                        except Exception:  # noqa: BLE001 - one bad connection never stops the loop
                            log.exception("proxy loop %d: handler failed", self.index)
                            relay = getattr(h, "__self__", None)
                            if isinstance(relay, TcpRelay):
                                relay.abort()
                    elif fd == wake_fd:
                        try:
                            os.read(wake_fd, 64)
                        except OSError:
                            pass
                if stale:
                    stale.clear()
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.crashed = e
            log.exception("proxy loop %d crashed", self.index)
        finally:
            self._close_all()

    def _expire(self, timeout: float) -> float:
        """Reset clients whose backend connect outlived the timeout; returns the next poll wait."""
        connecting = self.connecting
        now = time.monotonic()
        while connecting:
            deadline, relay = connecting[0]
            if relay.connected or relay.closed:
                connecting.popleft()
            elif deadline <= now:
                connecting.popleft()
                relay.expire()
            else:
                wait = deadline - now
                return wait if timeout < 0 else min(wait, timeout)
        return timeout

    def _close_all(self) -> None:
        relays = {getattr(h, "__self__", None) for h in list(self.handlers.values())}
        for r in relays:
            if isinstance(r, TcpRelay):
                r.close()
        for u in self.udp:
            u.close()
        self.pipes.close()
        self.ep.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
