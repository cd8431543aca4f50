"""ProxyServer: one process (one object) serving every published port of a sandbox.

Docker runs one docker-proxy process per port and address family, so a 1,000-port range costs
2,000 processes. Here a single ProxyServer holds any number of listeners and relays them from a
few event-loop threads:

- one epoll thread by default. Measured against docker-proxy on 2 cores (docs/proxy.md), a second
  loop only added GIL hand-offs (futex wake-ups and context switches on every splice return) and
  cost more CPU per byte in bulk transfers, and it did not raise the connection rate either: the
  Python work is serialized by the GIL anyway. ``loops=N`` still runs N loops; every TCP listener
  is then registered in every loop with EPOLLEXCLUSIVE, so one loop wakes per incoming connection
  and accepted connections spread over the loops without SO_REUSEPORT (which another root process
  could join).
- ``workers=N`` (the publisher's ``--proxy-workers``; default one per core, at most 4) forks N-1
  worker *processes* that serve every TCP listener too (``workers.py``): processes, unlike
  threads, do not share a GIL, so the relay uses every core as docker-proxy does. ``stats()``
  adds up every loop's and every worker's counters;
- UDP listeners and their flow tables live in loop 0 only (one owner, no locks); each table is
  capped (``udp_max_flows``), and datagrams refused at the cap are counted as ``udp_dropped``.
- Counters are plain lists per mapping per loop, written only by their loop and summed by
  ``stats()`` (``counters.py``).

Layers: this module opens the listeners (through ``kernel.sockets.bind_socket``, the one socket
recipe portwright binds with); ``listener.py`` accepts connections; ``loop.py`` is the epoll loop and its
per-thread resources; ``tcp.py`` and ``udp.py`` are the relays. The supervisor runs a server
in-process; the docker-proxy drop-in (``dockerproxy.py``) runs it for one mapping.
"""

from __future__ import annotations

import collections.abc
import errno
import resource
import socket
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import KernelError, PortInUse
from ..kernel import sockets as ksockets
from ..kernel.sockets import BACKLOG, bind_socket
from ..model import IPAddress, Mapping
from .counters import new_counters, total
from .listener import attach_tcp
from .loop import CONNECT_TIMEOUT, EventLoop
from .udp import MAX_FLOWS, UdpListener, tune_listener

if TYPE_CHECKING:
    from .workers import WorkerPool

__all__ = [
    "DEFAULT_LOOPS",
    "EventLoop",
    "ProxyServer",
    "bind_error",
    "describe_owner",
    "open_listener",
    "raise_nofile",
]

#: File descriptors the server wants: 2 per relayed connection plus listeners and pipes.
WANT_NOFILE = 1 << 17
#: Event-loop threads when the caller does not say (see the module docstring for why one).
DEFAULT_LOOPS = 1
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)


def describe_owner(proto: str, port: int, ip: IPAddress) -> str:
    """Who holds a port (pid and command), as the kernel's socket tables tell."""
    try:
        return ksockets.describe_owner(proto, port, ip)
    except Exception:  # noqa: BLE001 - any failure falls back to a plain, still-true answer
        return f"another socket (see: ss -lnp sport = :{port})"


def open_listener(m: Mapping) -> socket.socket:
    """Bind (and for stream protocols, listen on) the host side of one mapping, non-blocking.

    The socket itself is the same as a reservation's (``kernel.sockets.bind_socket``:
    SO_REUSEADDR, an IPv6 "::" that serves IPv6 only, the backlog); the relay adds its tuning."""
    try:
        s = bind_socket(m.proto, m.host_ip, m.host_port)
    except OSError as e:
        if m.proto == "sctp" and e.errno in _NO_SOCKET_TYPE:
            raise KernelError(
                f"opening an SCTP socket for {m.docker_format()}",
                f"{e.strerror}: this kernel has no SCTP support (try: modprobe sctp), "
                "or publish the port as tcp/udp",
                e.errno,
            ) from None
        raise bind_error(m, e) from None
    try:
        s.setblocking(False)
        _tune(s, m)
    except OSError as e:
        s.close()
        raise KernelError(f"tuning the listener {m.docker_format()}", str(e.strerror), e.errno) from None
    return s


def _tune(s: socket.socket, m: Mapping) -> None:
    if m.proto == "tcp":
        # Inherited by every accepted socket on Linux: no per-connection setsockopt.
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    elif m.proto == "udp":
        tune_listener(s, m.wildcard)


# socket() errnos that mean "this kernel has no such protocol", not a bind problem.
_NO_SOCKET_TYPE = (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT, errno.EPROTOTYPE)


def bind_error(m: Mapping, e: OSError) -> Exception:
    binding = f"{m.host_binding()}/{m.proto}"
    if e.errno == errno.EADDRINUSE:
        return PortInUse(binding, describe_owner(m.proto, m.host_port, m.host_ip))
    if e.errno == errno.EADDRNOTAVAIL:
        return KernelError(
            f"bind {binding}",
            f"{m.host_ip} is not an address of this host; "
            "publish on one that `ip addr` lists, or on 0.0.0.0 / ::",
            e.errno,
        )
    if e.errno == errno.EACCES:
        return KernelError(
            f"bind {binding}",
            "permission denied: ports below 1024 need root (or CAP_NET_BIND_SERVICE)",
            e.errno,
        )
    return KernelError(f"bind {binding}", str(e.strerror), e.errno)


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE so that 10,000+ connections (2 fds each) fit; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = WANT_NOFILE
    if hard != resource.RLIM_INFINITY and hard < want:
        try:  # root may raise the hard limit up to fs.nr_open
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


class ProxyServer:
    """Serves every given Mapping from one process.

    ``sockets`` hands over pre-bound sockets (dockerd 28+'s ``-use-listen-fd``, or the
    supervisor's reservation sockets) instead of binding here; they are then owned by the server.
    ``udp_max_flows`` caps each UDP mapping's flow table (see ``udp.py``); ``connect_timeout``
    bounds each backend connect (the client gets a reset after it, see ``loop.py``). ``twins``
    maps a dual-stack ``[::]`` mapping to its IPv4 half (served by the same socket, never listed
    in ``mappings``): IPv4 clients are relayed to the twin's backend.
    """

    def __init__(
        self,
        mappings: Sequence[Mapping],
        *,
        proxy_protocol: bool = False,
        udp_idle_timeout: float = 90.0,
        udp_max_flows: int = MAX_FLOWS,
        sockets: collections.abc.Mapping[Mapping, socket.socket] | None = None,
        loops: int | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        twins: collections.abc.Mapping[Mapping, Mapping] | None = None,
        workers: int = 1,
    ) -> None:
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout {connect_timeout} must be positive seconds")
        if udp_idle_timeout <= 0:
            raise ValueError(f"udp_idle_timeout {udp_idle_timeout} must be positive seconds")
        if udp_max_flows < 1:
            raise ValueError(f"udp_max_flows {udp_max_flows} must be at least 1")
        seen: set[Mapping] = set()
        self.mappings: list[Mapping] = []
        for m in mappings:
            if m not in seen:
                seen.add(m)
                self.mappings.append(m)
        self.proxy_protocol = proxy_protocol
        self.udp_idle_timeout = udp_idle_timeout
        self.udp_max_flows = udp_max_flows
        self.connect_timeout = connect_timeout
        self.twins = dict(twins or {})
        self.workers = max(1, workers)
        self._pool: WorkerPool | None = None
        self._given = dict(sockets or {})
        n = loops if loops is not None else DEFAULT_LOOPS
        self._nloops = max(1, n)
        self._loops: list[EventLoop] = []
        self._socks: dict[Mapping, socket.socket] = {}
        self._ctrs: list[dict[Mapping, list[int]]] = []
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False

    @property
    def listeners(self) -> dict[Mapping, socket.socket]:
        """The bound socket of each mapping (after start)."""
        return dict(self._socks)

    def start(self) -> None:
        with self._lock:
            if self._started:
                raise RuntimeError("ProxyServer.start() called twice")
            self._started = True
            raise_nofile()
            try:
                for m in self.mappings:
                    given = self._given.get(m)
                    if given is not None:
                        self._socks[m] = self._adopt(m, given)
                    else:
                        self._socks[m] = open_listener(m)
            except BaseException:
                self._close_listeners()
                raise
            many = self._nloops > 1 or self.workers > 1
            if self.workers > 1:
                self._start_workers()  # forks: before any thread of ours exists
            for i in range(self._nloops):
                loop = EventLoop(i, f"pw-proxy-{i}", self.connect_timeout)
                self._loops.append(loop)
                ctrs: dict[Mapping, list[int]] = {}
                self._ctrs.append(ctrs)
                for m, s in self._socks.items():
                    ctr = new_counters()
                    ctrs[m] = ctr
                    if m.proto == "udp":
                        if i == 0:
                            self._attach_udp(loop, m, s, ctr)
                    else:
                        attach_tcp(loop, m, s, ctr, self.proxy_protocol, self.twins.get(m), exclusive=many)
            for loop in self._loops:
                loop.thread.start()

    def _attach_udp(self, loop: EventLoop, m: Mapping, s: socket.socket, ctr: list[int]) -> None:
        u = UdpListener(
            loop,
            m,
            s,
            ctr,
            self.proxy_protocol,
            self.udp_idle_timeout,
            self.udp_max_flows,
            self.twins.get(m),
        )
        loop.udp.append(u)
        loop.watch(s.fileno(), u.on_event, level_triggered=True)

    def _start_workers(self) -> None:
        """Fork ``workers - 1`` processes that serve every TCP listener too (workers.py)."""
        from .workers import WorkerPool

        pool = WorkerPool(
            self.workers - 1,
            name="pw-proxy-w",
            proxy_protocol=self.proxy_protocol,
            connect_timeout=self.connect_timeout,
        )
        pool.start()
        self._pool = pool
        for i, m in enumerate(self.mappings):
            if m.proto != "udp":
                pool.add(i, m, self.twins.get(m), self._socks[m])

    @staticmethod
    def _adopt(m: Mapping, s: socket.socket) -> socket.socket:
        try:
            s.setblocking(False)
            # A reservation socket may carry a drop-all filter (it held the port for NAT); as the
            # proxy's listener it must see traffic. ENOENT just means there was none.
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            except OSError:
                pass
            _tune(s, m)
            if m.proto != "udp":
                s.listen(BACKLOG)
        except OSError as e:
            s.close()
            raise KernelError(
                f"adopting the listening socket for {m.docker_format()}", str(e.strerror), e.errno
            ) from None
        return s

    def _close_listeners(self) -> None:
        for s in self._socks.values():
            s.close()
        for m, s in self._given.items():
            if m not in self._socks:
                s.close()
        self._socks.clear()

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            for loop in self._loops:
                loop.stopping = True
                loop.wake()
            for loop in self._loops:
                if loop.thread.is_alive() and loop.thread is not threading.current_thread():
                    loop.thread.join(timeout=10)
            if self._pool is not None:
                self._pool.stop()
            self._close_listeners()

    def __enter__(self) -> ProxyServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per mapping, keyed by ``Mapping.docker_format()``: every loop's and every
        worker process's, added up."""
        remote = self._pool.stats() if self._pool is not None else []
        return {
            m.docker_format(): total(
                [
                    *(c for ctrs in self._ctrs if (c := ctrs.get(m)) is not None),
                    *(w[i] for w in remote if i in w),
                ]
            )
            for i, m in enumerate(self.mappings)
        }

    def worker_stats(self) -> list[dict[str, dict[str, int]]]:
        """Counters per process (this one first, then each worker): who served what."""
        remote = self._pool.stats() if self._pool is not None else []
        here = {
            m.docker_format(): total(c for ctrs in self._ctrs if (c := ctrs.get(m)) is not None)
            for m in self.mappings
        }
        return [here] + [
            {m.docker_format(): total([w[i]]) for i, m in enumerate(self.mappings) if i in w} for w in remote
        ]

    def alive(self) -> bool:
        """True while the server is started and not stopped, and every loop thread runs (false
        after a loop crashed). What a publisher asks before trusting the relay."""
        return self._started and not self._stopped and self.healthy()

    def healthy(self) -> bool:
        """True while every loop thread runs (false after a crash or stop)."""
        return bool(self._loops) and all(lp.thread.is_alive() for lp in self._loops)
