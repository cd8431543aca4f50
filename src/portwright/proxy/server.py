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
- UDP listeners and their flow tables live in loop 0 only (one owner, no locks); each table is
  capped (``udp_max_flows``), and datagrams refused at the cap are counted as ``udp_dropped``.
- Counters are plain lists per mapping per loop, written only by their loop and summed by
  ``stats()`` (``counters.py``).

Layers: this module opens the listeners (through ``kernel.sockets.bind_socket``, the one socket
recipe portwright binds with) and accepts connections; ``loop.py`` is the epoll loop and its
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

from ..errors import KernelError, PortInUse
from ..kernel import sockets as ksockets
from ..kernel.sockets import BACKLOG, bind_socket
from ..model import IPAddress, Mapping
from . import proxyproto
from .counters import ACTIVE, ERRORS, TOTAL, new_counters, total
from .loop import CONNECT_TIMEOUT, EventLoop
from .tcp import TcpRelay
from .udp import MAX_FLOWS, UdpListener, tune_listener

__all__ = [
    "DEFAULT_LOOPS",
    "EventLoop",
    "ProxyServer",
    "bind_error",
    "describe_owner",
    "open_listener",
    "raise_nofile",
]

#: Connections accepted per listener wake-up before other sockets get a turn.
ACCEPT_BATCH = 64
#: File descriptors the server wants: 2 per relayed connection plus listeners and pipes.
WANT_NOFILE = 1 << 17
#: Event-loop threads when the caller does not say (see the module docstring for why one).
DEFAULT_LOOPS = 1
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)


def _proto_number(proto: str) -> int:
    if proto == "tcp":
        return socket.IPPROTO_TCP
    if proto == "udp":
        return socket.IPPROTO_UDP
    return int(getattr(socket, "IPPROTO_SCTP", 132))


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


class _Listener:
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
        self.backend = (str(mapping.container_ip), mapping.container_port)
        self.bfamily = socket.AF_INET if mapping.container_ip.version == 4 else socket.AF_INET6
        # A dual-stack [::] socket also serves its IPv4 twin: IPv4 clients (seen as ::ffff:a.b.c.d)
        # go to the twin's backend, as they would through the NAT path.
        four = twin or mapping
        self.backend4 = (str(four.container_ip), four.container_port)
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
                    else:
                        lst = _Listener(loop, m, s, ctr, self.proxy_protocol, self.twins.get(m))
                        loop.listeners.append(lst)
                        loop.watch(s.fileno(), lst.on_event, level_triggered=True, exclusive=self._nloops > 1)
            for loop in self._loops:
                loop.thread.start()

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
            self._close_listeners()

    def __enter__(self) -> ProxyServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per mapping, keyed by ``Mapping.docker_format()``."""
        return {
            m.docker_format(): total(c for ctrs in self._ctrs if (c := ctrs.get(m)) is not None)
            for m in self.mappings
        }

    def alive(self) -> bool:
        """True while the server is started and not stopped, and every loop thread runs (false
        after a loop crashed). What a publisher asks before trusting the relay."""
        return self._started and not self._stopped and self.healthy()

    def healthy(self) -> bool:
        """True while every loop thread runs (false after a crash or stop)."""
        return bool(self._loops) and all(lp.thread.is_alive() for lp in self._loops)
