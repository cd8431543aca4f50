"""The resolver process: one per state directory, serving every bridge network at once.

It listens on each network's gateway addresses, port 53, UDP and TCP (``IP_FREEBIND``: a gateway
address on a bridge without ports, or an IPv6 one still in DAD, binds all the same), and nowhere
else, so the host's own port 53 on other interfaces stays free for whoever uses it. A query is
answered for the network whose gateway it arrived on, so sandboxes of one network never see
another's names.

Records come from the state database. The table is rebuilt and swapped whole when the engine says
something changed (``reload`` on ``STATE/ctl/dns.sock``, answered once the new table is in place) and,
as a fallback, whenever SQLite's ``data_version`` shows another writer committed. Rebuilding happens
between two datagrams on the one thread: queries that arrive meanwhile wait in the socket buffers
and are answered from the new table, so no query in flight is lost (aardvark-dns #389). Listening
sockets of networks that stay are never closed. Each rebuild also rewrites the hosts-file block.

The process exits after ``IDLE_SECONDS`` without a live sandbox; ``service.reconcile`` starts it
again after a kill -9. Every packet's handling is guarded: a bad packet costs that packet only.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import ipaddress
import json
import os
import selectors
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.rcode

from ..kernel.proc import set_process_name, set_process_title
from ..state import State, proc_start_time
from . import hosts
from .forward import Forwarder, host_upstreams
from .message import Drop, Forward, Reply, Subnet, decide, error_reply
from .paths import ctl_path, pid_path
from .records import Entry, Table
from .stats import Stats

NAME = "pw-dns"
PORT = 53
IP_FREEBIND = 15  # linux/in.h: bind an address not (yet) configured on an interface
IPV6_FREEBIND = 78  # linux/in6.h: the same for IPv6 (an address still in DAD)
IDLE_SECONDS = 30.0  # no live sandbox on any network for this long: exit
POLL_SECONDS = 0.5  # how often data_version is checked for changes no one announced
RETRY_BIND_SECONDS = 1.0  # a gateway that could not be bound is tried again this often
TCP_IDLE_SECONDS = 10.0
MAX_TCP = 256
CTL_TIMEOUT = 0.5
CACHE_ENTRIES = 4096  # distinct questions kept; the whole cache goes when full or on a rebuild
CACHE_ROTATIONS = 16  # a name with more addresses than this is built per query (no cache)
SLOW_REFRESH_SECONDS = 0.1
STALL_SECONDS = 0.5  # the loop waking this much later than asked is logged (CPU starvation)  # a rebuild longer than this is logged: queries wait behind it


def load(state: State) -> tuple[list[Entry], dict[str, list[tuple[str, Subnet]]]]:
    """Live sandboxes as entries, and each network's (gateway, subnet) pairs."""
    nets: dict[str, list[tuple[str, Subnet]]] = {}
    for n in state.networks():
        nets[n.name] = [(str(n.gateway4), n.subnet4)]
        if n.gateway6 is not None and n.subnet6 is not None:
            nets[n.name].append((str(n.gateway6), n.subnet6))
    entries = [
        Entry(r.sandbox.network, r.name, r.spec.aliases, r.sandbox.ip4, r.sandbox.ip6)
        for r in state.sandboxes(ports=False)  # names and addresses: no port rows to read
        if r.status != "exited" and r.sandbox.network in nets and (r.sandbox.ip4 or r.sandbox.ip6)
    ]
    return entries, nets


def _listen(addr: str, kind: int) -> socket.socket:
    v6 = ipaddress.ip_address(addr).version == 6
    s = socket.socket(
        socket.AF_INET6 if v6 else socket.AF_INET, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    )
    try:
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        if kind == socket.SOCK_STREAM:
            # TCP only: a restarted resolver must not wait out TIME_WAIT. Never for UDP, where it
            # would let a second resolver share the port and take its queries.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, PORT))
        if kind == socket.SOCK_STREAM:
            s.listen(64)
    except OSError:
        s.close()
        raise
    return s


def _sendto(sock: socket.socket, client: tuple[str, int], wire: bytes) -> None:
    sock.sendto(wire, client)


@dataclass(slots=True)
class Conn:
    network: str
    buf: bytearray = field(default_factory=bytearray)
    last: float = 0.0


class Resolver:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.state = State(state_dir)
        self.sel = selectors.DefaultSelector()
        self.table = Table()
        self.subnets: dict[str, list[Subnet]] = {}
        self.listeners: dict[tuple[str, str, int], socket.socket] = {}  # (network, addr, kind)
        self.conns: dict[socket.socket, Conn] = {}
        self.turn = 0
        self.cache: dict[tuple[str, bool, bytes], list[bytes]] = {}  # query bytes but ID -> answers
        self.version = -1
        self.missing = False
        self.next_poll = self.next_bind = 0.0
        self.idle_since = time.monotonic()
        self.hosts_file = hosts.hosts_path(state_dir)
        self.forwarder = Forwarder([])
        self.stats = Stats()
        for s in self.forwarder.open():
            self.sel.register(s, selectors.EVENT_READ, ("upstream", ""))
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        path = ctl_path(state_dir)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.ctl.bind(path)
        self.ctl.listen(64)
        self.sel.register(self.ctl, selectors.EVENT_READ, ("ctl", ""))
        with open(pid_path(state_dir), "w") as f:
            f.write(f"{os.getpid()} {proc_start_time(os.getpid())}\n")

    # ---------------------------------------------------------------- records
    def refresh(self) -> None:
        """Rebuild the table from state, open and close listeners to match, rewrite hosts."""
        t0 = time.monotonic()
        self._rebuild()
        took = time.monotonic() - t0
        self.stats.rebuilt(int(took * 1e9))
        if took > SLOW_REFRESH_SECONDS:
            print(f"portwright: dns: slow refresh: {took * 1000:.0f} ms", file=sys.stderr)

    def _rebuild(self) -> None:
        self.version = self._data_version()
        # A connection of its own for each rebuild: what it reads is the database as committed
        # now, never a snapshot some earlier, unfinished statement still holds open.
        fresh = State(self.state_dir)
        try:
            entries, nets = load(fresh)
        finally:
            fresh.close()
        gateways = {ip for pairs in nets.values() for ip, _ in pairs}
        self.forwarder.upstreams = host_upstreams(gateways)
        self.table = Table.build(entries)
        self.cache.clear()  # answers of the old table
        self.subnets = {n: [sub for _, sub in pairs] for n, pairs in nets.items()}
        self._sync_listeners(nets)
        if entries:
            self.idle_since = time.monotonic()
        if self.hosts_file:
            try:
                hosts.update(self.hosts_file, self.state_dir, self.table.host_entries())
            except OSError as e:
                print(f"portwright: dns: updating {self.hosts_file}: {e}", file=sys.stderr)

    def _sync_listeners(self, nets: dict[str, list[tuple[str, Subnet]]]) -> None:
        want = {
            (n, ip, k)
            for n, pairs in nets.items()
            for ip, _ in pairs
            for k in (socket.SOCK_DGRAM, socket.SOCK_STREAM)
        }
        for key in [k for k in self.listeners if k not in want]:
            print(f"portwright: dns: network {key[0]} gone: closing {key[1]}:{PORT}", file=sys.stderr)
            s = self.listeners.pop(key)
            self.sel.unregister(s)
            s.close()
        self.missing = False
        for key in sorted(want - self.listeners.keys()):
            network, addr, kind = key
            try:
                s = _listen(addr, kind)
            except OSError as e:
                self.missing = True
                print(f"portwright: dns: cannot listen on {addr}:{PORT} ({network}): {e}", file=sys.stderr)
                continue
            self.listeners[key] = s
            role = "udp" if kind == socket.SOCK_DGRAM else "tcp"
            self.sel.register(s, selectors.EVENT_READ, (role, network))

    def _data_version(self) -> int:
        rows = self.state.db.execute("PRAGMA data_version").fetchall()  # all rows: the statement ends
        return int(rows[0][0])

    def _changed(self) -> bool:
        try:
            return self._data_version() != self.version
        except sqlite3.Error:
            return True

    # ---------------------------------------------------------------- loop
    def serve(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.quit())
        self.stats.install()
        self.refresh()
        while True:
            now = time.monotonic()
            if now >= self.next_poll:
                self.next_poll = now + POLL_SECONDS
                if self._changed() or (self.missing and now >= self.next_bind):
                    self.next_bind = now + RETRY_BIND_SECONDS
                    self._guard(self.refresh)
                self._expire_conns(now)
                if not self.table.host_names and now - self.idle_since > IDLE_SECONDS:
                    self.quit()
                if not os.path.exists(self.state.path):
                    self.quit()  # its state directory was deleted: nothing to serve, ever again
            deadline = self.forwarder.next_deadline()
            wait = min(self.next_poll, deadline if deadline is not None else self.next_poll) - now
            events = self.sel.select(max(0.0, wait))
            late = time.monotonic() - now - max(0.0, wait)
            if late > STALL_SECONDS:
                print(f"portwright: dns: the loop woke {late:.2f} s late (host overloaded?)", file=sys.stderr)
            for key, _ in events:
                role, network = key.data
                self._guard(self._event, role, network, key.fileobj)
            self.forwarder.expire(time.monotonic())

    def _guard(self, fn: Callable[..., None], *args: object) -> None:
        """Run one step; whatever it raises is logged and costs that step only, never the process."""
        try:
            fn(*args)
        except Exception as e:
            print(f"portwright: dns: {type(e).__name__}: {e}", file=sys.stderr)

    def _event(self, role: str, network: str, sock: socket.socket) -> None:
        if role == "udp":
            self._udp(sock, network)
        elif role == "upstream":
            self.forwarder.on_readable(sock)
        elif role == "tcp":
            self._accept(sock, network)
        elif role == "conn":
            self._tcp_read(sock)
        elif role == "ctl":
            self._control()

    def _udp(self, sock: socket.socket, network: str) -> None:
        for _ in range(64):  # a burst is drained, then the other sockets get their turn
            try:
                data, client = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            t0 = time.perf_counter_ns()
            send = functools.partial(_sendto, sock, client)
            if not self._member(network, client[0]):
                self._refuse(data, send)
                continue
            self._query(data, network, send, tcp=False)
            self.stats.query(time.perf_counter_ns() - t0)

    def _member(self, network: str, addr: str) -> bool:
        """Is the client on this network? A sandbox of another network can route to this gateway
        address through the host, but must not read this network's names."""
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in sub for sub in self.subnets.get(network, ()))

    @staticmethod
    def _refuse(data: bytes, send: Callable[[bytes], object]) -> None:
        d = error_reply(data, dns.rcode.REFUSED)
        if isinstance(d, Reply):
            with contextlib.suppress(OSError):
                send(d.wire)

    def _query(self, data: bytes, network: str, send: Callable[[bytes], object], tcp: bool) -> None:
        self.turn += 1
        key = (network, tcp, data[2:])
        forms = self.cache.get(key)
        if forms is not None:  # the same question since the last rebuild: its answer, our ID swapped in
            with contextlib.suppress(OSError):
                send(data[:2] + forms[self.turn % len(forms)])
            return
        d = decide(data, self.table, network, self.subnets.get(network, ()), self.turn, tcp=tcp)
        if isinstance(d, Reply) and d.cacheable and d.rotations <= CACHE_ROTATIONS:
            self._remember(key, data, network, tcp, d)
        if isinstance(d, Reply):
            with contextlib.suppress(OSError):
                send(d.wire)
        elif isinstance(d, Forward):
            self.forwarder.submit(d.query, lambda wire: self._send_quietly(send, wire), time.monotonic())
        elif isinstance(d, Drop):
            pass

    def _remember(self, key: tuple[str, bool, bytes], data: bytes, network: str, tcp: bool, d: Reply) -> None:
        """Keep every round-robin form of a table answer, in turn order, until the next rebuild."""
        if len(self.cache) >= CACHE_ENTRIES:
            self.cache.clear()
        subnets = self.subnets.get(network, ())
        forms = [d.wire]
        for t in range(1, d.rotations):
            r = decide(data, self.table, network, subnets, self.turn + t, tcp=tcp)
            forms.append(r.wire if isinstance(r, Reply) else d.wire)
        k = self.turn % len(forms)  # forms[i] answers turn self.turn + i
        self.cache[key] = [f[2:] for f in forms[-k:] + forms[:-k]] if k else [f[2:] for f in forms]

    @staticmethod
    def _send_quietly(send: Callable[[bytes], object], wire: bytes) -> None:
        with contextlib.suppress(OSError):
            send(wire)

    # ---------------------------------------------------------------- TCP (RFC 7766: 2-byte length)
    def _accept(self, sock: socket.socket, network: str) -> None:
        try:
            conn, peer = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(self.conns) >= MAX_TCP or not self._member(network, peer[0]):
            conn.close()
            return
        conn.setblocking(False)
        self.conns[conn] = Conn(network, last=time.monotonic())
        self.sel.register(conn, selectors.EVENT_READ, ("conn", network))

    def _tcp_read(self, conn: socket.socket) -> None:
        c = self.conns[conn]
        try:
            chunk = conn.recv(65537)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(conn)
            return
        c.buf += chunk
        c.last = time.monotonic()
        while len(c.buf) >= 2 and len(c.buf) >= 2 + int.from_bytes(c.buf[:2], "big"):
            n = int.from_bytes(c.buf[:2], "big")
            msg, c.buf = bytes(c.buf[2 : 2 + n]), c.buf[2 + n :]
            self._query(msg, c.network, functools.partial(self._tcp_send, conn), tcp=True)

    def _tcp_send(self, conn: socket.socket, wire: bytes) -> None:
        if conn.fileno() < 0:
            return
        conn.settimeout(CTL_TIMEOUT)  # replies are small; a client that reads nothing is dropped
        try:
            conn.sendall(len(wire).to_bytes(2, "big") + wire)
        except OSError:
            self._close(conn)
        else:
            conn.setblocking(False)

    def _close(self, conn: socket.socket) -> None:
        if self.conns.pop(conn, None) is not None:
            self.sel.unregister(conn)
        conn.close()

    def _expire_conns(self, now: float) -> None:
        for conn in [s for s, c in self.conns.items() if now - c.last > TCP_IDLE_SECONDS]:
            self._close(conn)

    # ---------------------------------------------------------------- control
    def _control(self) -> None:
        try:
            conn, _ = self.ctl.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            conn.settimeout(CTL_TIMEOUT)
            try:
                word = conn.recv(64).strip()
            except OSError:
                return
            if word == b"reload":
                self.refresh()
            reply = b"ok\n"
            if word in (b"stats", b"stats-reset"):  # bench --dns: what the resolver itself measured
                reply = json.dumps(self.stats.snapshot()).encode() + b"\n"
                if word == b"stats-reset":
                    self.stats.reset()
            with contextlib.suppress(OSError):
                conn.sendall(reply)

    def quit(self) -> None:
        """Leave nothing behind: our hosts block, the control socket and the pid file."""
        if self.hosts_file:
            with contextlib.suppress(OSError):
                hosts.update(self.hosts_file, self.state_dir, [])
        for path in (ctl_path(self.state_dir), pid_path(self.state_dir)):
            with contextlib.suppress(OSError):
                os.unlink(path)
        os._exit(0)


def _answering(state_dir: str) -> bool:
    """Does a resolver already answer on this state directory's control socket?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(CTL_TIMEOUT * 4)
        try:
            s.connect(ctl_path(state_dir))
            s.sendall(b"ping\n")
            return s.recv(8).startswith(b"ok")
        except OSError:
            return False


def main(argv: list[str]) -> int:
    state_dir = argv[0] if argv else State().dir
    if _answering(state_dir):
        return 0  # one resolver per state directory
    set_process_name(NAME)
    set_process_title(f"{NAME} {state_dir}")
    faulthandler.register(signal.SIGUSR1, file=sys.stderr)  # kill -USR1: its stack, in logs/dns.log
    Resolver(state_dir).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
