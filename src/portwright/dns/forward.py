"""Relaying names we do not own to the host's resolvers, without ever blocking the resolver.

Upstreams come from the host's resolv.conf (``PORTWRIGHT_UPSTREAM_RESOLV_CONF`` names another
file). The resolver runs in the host's network namespace, so even systemd-resolved's stub
(127.0.0.53) is reachable from it, which it never is from inside a sandbox; when the stub is the
only server listed and systemd-resolved's own list of real upstreams exists
(/run/systemd/resolve/resolv.conf), those are used instead, so answers are not cached twice.

``Forwarder`` is non-blocking: ``submit`` sends the query under a fresh ID from one socket per
family and returns; ``on_readable`` matches an upstream's answer by ID, source and question and
hands the client its bytes with the client's ID put back; ``expire`` retries on the next upstream
after ``TIMEOUT`` and answers SERVFAIL after ``ATTEMPTS`` tries, so a dead upstream costs the client
a bounded wait and never a hang.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

import dns.exception
import dns.message

from .message import servfail

ENV = "PORTWRIGHT_UPSTREAM_RESOLV_CONF"
DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_UPSTREAMS = "/run/systemd/resolve/resolv.conf"  # systemd-resolved's real servers
RESOLVED_STUB = ipaddress.ip_address("127.0.0.53")
TIMEOUT = 0.8  # seconds per upstream try
# Tries (each on the next upstream) before SERVFAIL: 2 x 0.8 s stays inside the 2 s a sandbox's
# resolv.conf gives its client (service.RESOLV_OPTIONS), so the client hears SERVFAIL, not silence.
ATTEMPTS = 2
MAX_PENDING = 4096  # queries in flight upstream; beyond it a query gets SERVFAIL at once
PORT = 53


def parse_servers(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, in order (bad lines ignored)."""
    out: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            addr = words[1].split("%", 1)[0]  # a link-local's zone is not kept
            try:
                out.append(str(ipaddress.ip_address(addr)))
            except ValueError:
                continue
    return out


def choose(host_conf: str, resolved_conf: str | None, exclude: set[str]) -> list[str]:
    """The upstreams to use: the host's list, or systemd-resolved's real ones behind its stub."""
    servers = parse_servers(host_conf)
    if (
        resolved_conf is not None
        and servers
        and all(ipaddress.ip_address(s) == RESOLVED_STUB for s in servers)
    ):
        real = parse_servers(resolved_conf)
        servers = real or servers
    return [s for s in servers if s not in exclude]


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def host_upstreams(exclude: set[str]) -> list[str]:
    path = os.environ.get(ENV, DEFAULT_RESOLV_CONF)
    resolved = _read(RESOLVED_UPSTREAMS) if path == DEFAULT_RESOLV_CONF else None
    return choose(_read(path) or "", resolved, exclude)


@dataclass(slots=True)
class Pending:
    query: dns.message.Message
    client_id: int
    reply: Callable[[bytes], None]
    tries: int
    upstream: tuple[str, int]
    deadline: float
    ids: list[tuple[int, tuple[str, int]]]  # every try's (ID, upstream): a late answer still counts


class Forwarder:
    def __init__(self, upstreams: list[str], timeout: float = TIMEOUT, attempts: int = ATTEMPTS) -> None:
        self.upstreams = upstreams
        self.timeout = timeout
        self.attempts = attempts
        self.pending: dict[int, Pending] = {}
        self.socks: dict[int, socket.socket] = {}
        self.next = 0

    def open(self) -> list[socket.socket]:
        """One socket per family (IPv6 only where the host has it); the server watches them."""
        for family, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            try:
                s = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            except OSError:
                continue
            try:
                s.bind((wildcard, 0))
            except OSError:
                s.close()
                continue
            self.socks[family] = s
        return list(self.socks.values())

    def submit(self, query: dns.message.Message, reply: Callable[[bytes], None], now: float) -> None:
        if not self.upstreams or len(self.pending) >= MAX_PENDING * ATTEMPTS:
            reply(servfail(query))
            return
        p = Pending(query, query.id, reply, 0, ("", PORT), now, [])
        self._send(p, now)

    def _send(self, p: Pending, now: float) -> None:
        server = self.upstreams[self.next % len(self.upstreams)]
        self.next += 1
        qid = secrets.randbelow(65536)
        while qid in self.pending:
            qid = secrets.randbelow(65536)
        p.tries += 1
        p.upstream = (server, PORT)
        p.deadline = now + self.timeout
        p.query.id = qid
        try:
            wire = p.query.to_wire()
        finally:
            p.query.id = p.client_id
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        self.pending[qid] = p
        p.ids.append((qid, p.upstream))
        try:
            self.socks[family].sendto(wire, p.upstream)
        except (OSError, KeyError):
            p.deadline = now  # unreachable at once: the next expire moves on

    def on_readable(self, sock: socket.socket) -> None:
        """Read every waiting answer; hand each one that matches a pending query to its client."""
        while True:
            try:
                data, src = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error from an earlier send; the try expires
            self._answer(data, (str(ipaddress.ip_address(src[0].split("%")[0])), src[1]))

    def _answer(self, data: bytes, src: tuple[str, int]) -> None:
        if len(data) < 12:
            return
        qid = int.from_bytes(data[:2], "big")
        p = self.pending.get(qid)
        if p is None or (qid, src) not in {(i, (str(ipaddress.ip_address(u[0])), u[1])) for i, u in p.ids}:
            return
        try:
            resp = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return  # a garbled answer: wait for the next one or the timeout
        if resp.question != p.query.question:
            return
        for i, _ in p.ids:
            self.pending.pop(i, None)
        p.reply(p.client_id.to_bytes(2, "big") + data[2:])  # the same answer, under the client's ID

    def expire(self, now: float) -> None:
        due = {id(p): p for p in self.pending.values() if p.deadline <= now}
        for p in due.values():
            if p.tries < self.attempts:
                self._send(p, now)  # the earlier tries' IDs stay valid until the last one expires
                continue
            for i, _ in p.ids:
                self.pending.pop(i, None)
            p.reply(servfail(p.query))

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self.pending.values()), default=None)

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        self.socks.clear()
