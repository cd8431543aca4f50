"""Test helpers for the proxy: a backend namespace and small real servers to run inside it.

``backend_ns()`` creates a throwaway network namespace joined to the host by a veth pair, with
addresses from a random /29 of 198.19.250.0/23 and a /64 of 2001:2:fa00::/48 (benchmarking
ranges; checked against the host's routes so parallel test runs do not collide). It yields a
``Backend`` that starts servers inside the namespace and removes everything afterwards.

The servers are plain Python run with ``ip netns exec``: an epoll TCP server (echo, with a
summary line after the client's EOF, optionally reporting a PROXY v2 header) that can hold tens
of thousands of connections, and a UDP echo server. For relays that need no namespace:
``echo_server()`` (a loopback TCP/UDP echo thread that answers ``payload|ok``), ``echo()`` (one
round trip to EOF), ``burst()`` (threads of such round trips) and ``refused()``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from pwutil import free_port  # noqa: F401  (re-exported for the proxy tests)

from conftest import routed_ns, sh

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")

TCP_SERVER = r"""
import json, os, resource, select, socket, sys
sys.path.insert(0, SRC)
from portwright.proxy import proxyproto
fam = socket.AF_INET6 if ":" in HOST else socket.AF_INET
_h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (_h, _h))
ls = socket.socket(fam, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((HOST, PORT)); ls.listen(4096); ls.setblocking(False)
ep = select.epoll(); ep.register(ls.fileno(), select.EPOLLIN)
conns = {}  # fd -> [sock, count, header_buf or None, peer]
print("ready", flush=True)
while True:
    for fd, ev in ep.poll():
        if fd == ls.fileno():
            while True:
                try:
                    c, peer = ls.accept()
                except BlockingIOError:
                    break
                c.setblocking(False)
                conns[c.fileno()] = [c, 0, b"" if PP else None, peer]
                ep.register(c.fileno(), select.EPOLLIN)
            continue
        st = conns[fd]; c = st[0]
        try:
            data = c.recv(65536)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = None
        if data is None:
            ep.unregister(fd); c.close(); del conns[fd]; continue
        if st[2] is not None and data:
            st[2] += data
            try:
                h = proxyproto.decode(st[2])
            except ValueError:
                if len(st[2]) < 232:
                    continue
                h = None
            info = {"peer": [st[3][0], st[3][1]]}
            if h is not None:
                info.update(proto=h.proto, src=[str(h.src[0]), h.src[1]], dst=[str(h.dst[0]), h.dst[1]])
                data = st[2][h.length:]
            else:
                data = st[2]
            st[2] = None
            c.setblocking(True); c.sendall((json.dumps(info) + "\n").encode()); c.setblocking(False)
            if not data:
                continue
        if data:
            st[1] += len(data)
            if ECHO:
                c.setblocking(True); c.sendall(data); c.setblocking(False)
        else:
            c.setblocking(True)
            try:
                c.sendall(("EOF %d\n" % st[1]).encode())
            except OSError:
                pass
            ep.unregister(fd); c.close(); del conns[fd]
"""

UDP_SERVER = r"""
import json, socket, sys
sys.path.insert(0, SRC)
from portwright.proxy import proxyproto
fam = socket.AF_INET6 if ":" in HOST else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind((HOST, PORT))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    if PP:
        h = proxyproto.decode(data)
        info = {"peer": [peer[0], peer[1]], "src": [str(h.src[0]), h.src[1]], "dst": [str(h.dst[0]), h.dst[1]],
                "len": len(data) - h.length}
        s.sendto(json.dumps(info).encode(), peer)
    else:
        s.sendto(data, peer)
"""


@dataclass
class Backend:
    """A namespace reachable from the host at ``ip4``/``ip6`` (the host side is ``host4``/``host6``)."""

    ns: str
    veth: str
    host4: ipaddress.IPv4Address
    ip4: ipaddress.IPv4Address
    host6: ipaddress.IPv6Address
    ip6: ipaddress.IPv6Address
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(
        self, code: str, host: str, port: int, *, proxy_protocol: bool = False, echo: bool = True
    ) -> subprocess.Popen[str]:
        prelude = (
            f"SRC = {os.path.abspath(SRC)!r}\nHOST = {host!r}\nPORT = {port}\n"
            f"PP = {proxy_protocol}\nECHO = {echo}\n"
        )
        p = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", prelude + code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "ready":
            err = p.stderr.read() if p.stderr else ""
            raise RuntimeError(f"backend server did not start: {line!r} {err}")
        return p

    def tcp_server(
        self, port: int, *, v6: bool = False, proxy_protocol: bool = False, echo: bool = True
    ) -> subprocess.Popen[str]:
        return self.start(
            TCP_SERVER, "::" if v6 else "0.0.0.0", port, proxy_protocol=proxy_protocol, echo=echo
        )

    def udp_server(
        self, port: int, *, v6: bool = False, proxy_protocol: bool = False
    ) -> subprocess.Popen[str]:
        return self.start(UDP_SERVER, "::" if v6 else "0.0.0.0", port, proxy_protocol=proxy_protocol)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
        self.procs.clear()


def _free_subnet() -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]:
    used = []
    for line in sh("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast", "unreachable", "blackhole", "prohibit"):
            word = line.split()[1]
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Network(word, strict=False))
    pool = list(ipaddress.IPv4Network("198.19.250.0/23").subnets(new_prefix=29))
    random.shuffle(pool)
    for net in pool:
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            sub6 = ipaddress.IPv6Network(f"2001:2:fa00:{int(net.network_address) & 0xFFFF:x}::/64")
            return net, sub6
    raise RuntimeError("no free /29 left in 198.19.250.0/23 for a test backend")


@contextlib.contextmanager
def backend_ns() -> Iterator[Backend]:
    tag = secrets.token_hex(3)
    ns, veth = f"pwt-pb-{tag}", f"pwtb{tag}"
    net4, net6 = _free_subnet()
    host4, ip4 = net4.network_address + 1, net4.network_address + 2
    host6, ip6 = net6.network_address + 1, net6.network_address + 2
    be = Backend(ns, veth, host4, ip4, host6, ip6)
    try:
        routed_ns(ns, veth, (host4, ip4, 29), (host6, ip6, 64))  # type: ignore[arg-type]
        yield be
    finally:
        be.stop_all()
        sh("ip", "link", "del", veth, check=False)
        sh("ip", "netns", "del", ns, check=False)


def wait_until(pred: object, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


@contextlib.contextmanager
def echo_server(proto: str = "tcp") -> Iterator[int]:
    """A loopback echo thread on a free port: TCP answers all it read (to EOF) plus ``|ok``;
    UDP answers each datagram plus ``|ok``. Yields the port."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def tcp() -> None:
        s.listen(128)
        while not stop.is_set():
            try:
                c, _ = s.accept()
            except OSError:
                return
            with c:
                data = b""
                while chunk := c.recv(65536):
                    data += chunk
                c.sendall(data + b"|ok")

    def udp() -> None:
        while not stop.is_set():
            try:
                data, peer = s.recvfrom(65535)
            except OSError:
                return
            s.sendto(data + b"|ok", peer)

    t = threading.Thread(target=tcp if proto == "tcp" else udp, daemon=True)
    t.start()
    try:
        yield s.getsockname()[1]
    finally:
        stop.set()
        s.close()


def echo(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    """One TCP round trip: send ``payload``, half-close, read the answer to EOF."""
    with socket.create_connection((host, port), timeout=5) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := c.recv(65536):
            out += chunk
    return out


def burst(port: int, payload: bytes, threads: int, rounds: int) -> None:
    """``threads`` threads each make ``rounds`` round trips through ``port`` to an
    ``echo_server``; every answer must be ``payload|ok`` (a failure is raised here)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(rounds):
                got = echo(port, payload)
                assert got == payload + b"|ok", got
        except BaseException as e:  # handed to the caller's thread
            errors.append(e)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def refused(port: int) -> bool:
    """True if nothing accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as c:
        return c.connect_ex(("127.0.0.1", port)) != 0
