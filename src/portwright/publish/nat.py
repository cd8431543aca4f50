"""Kernel NAT publisher: nftables map elements, placeholder reservations, and a relay for ::1.

The kernel rewrites every IPv4 path (external, host addresses, 127.0.0.1 through
route_localnet) and every IPv6 path that it can. What IPv6 cannot DNAT — ``[::1]:P``, whose
loopback source may not leave the host, and an IPv6 binding in front of an IPv4-only sandbox —
is served by a small in-process relay on exactly those bindings (``rules.needs_relay`` decides),
so ``localhost`` works whichever way it resolves. All other reservation sockets drop everything
they receive. The relay code is imported only when a mapping needs it.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

from ..firewall import rules
from ..model import Mapping
from .base import Bound
from .registry import PublishContext
from .reserve import make_placeholder

if TYPE_CHECKING:
    from ..proxy.server import ProxyServer


class NatPublisher:
    name = "nat"
    dual_stack = True  # one [::]:P reservation holds both families (half the descriptors)

    def __init__(self, ctx: PublishContext) -> None:
        self.ctx = ctx
        self.mappings: list[Mapping] = []
        self._relays: dict[Mapping, socket.socket] = {}
        self.sockets: list[socket.socket] = []
        self.proxy: ProxyServer | None = None
        self.in_kernel = False
        # The NAT mappings whose host bindings our reservations hold: unpublish deletes them by
        # key with no table read (ops.Firewall.unpublish); None: it reads the table (#11).
        self._known: list[Mapping] | None = None

    def publish(self, bound: Bound) -> None:
        self.mappings = [m for m, _ in bound]
        nat = [m for m in self.mappings if rules.nat_capable(m)]
        # One pass, no dict keyed by Mapping (hashing a Mapping hashes its addresses in Python):
        # 10,000 ports are 20,000 mappings (#11).
        proxied: list[tuple[Mapping, socket.socket]] = []
        for m, s in bound:
            if s is None:
                continue
            if rules.needs_relay(m):
                proxied.append((m, s))
                self.sockets.append(s)
            else:
                self.sockets.append(make_placeholder(s))
        if proxied:
            # ::1 is the host talking to itself: relay it to the sandbox's IPv4 address when it
            # has one, so "localhost" reaches the same server whichever way it resolves (most
            # servers listen on IPv4; an IPv6-only sandbox keeps its IPv6 target).
            v4 = {
                (m.proto, m.host_port, m.container_port): m.container_ip
                for m, _ in bound
                if type(m.container_ip) is ipaddress.IPv4Address
            }
            self._relays = {
                Mapping(
                    m.proto,
                    m.host_ip,
                    m.host_port,
                    v4.get((m.proto, m.host_port, m.container_port), m.container_ip),
                    m.container_port,
                ): s
                for m, s in proxied
            }
        self._known = known_if_held(nat, {(m.proto, m.host_port) for m, s in bound if s is not None})
        if nat:
            # One transaction; it also flushes the published UDP ports' conntrack entries, so a
            # client that sent before the rule existed is not stuck on the host (Docker #8795).
            self.ctx.firewall.publish(self.ctx.owner, nat)
            self.in_kernel = True

    def relays(self) -> dict[Mapping, socket.socket]:
        return dict(self._relays)

    def serve(self, relays: dict[Mapping, socket.socket] | None = None) -> None:
        relays = self._relays if relays is None else relays
        if not relays:
            return
        from ..proxy.server import ProxyServer

        self._relays = dict(relays)
        srv = ProxyServer(list(relays), sockets=relays)
        srv.start()
        self.proxy = srv

    def unpublish(self) -> list[str]:
        errs: list[str] = []
        if self.in_kernel:
            try:
                self.ctx.firewall.unpublish(self.ctx.owner, known=self._known)
                self.in_kernel = False
            except Exception as e:  # teardown goes on
                errs.append(f"nft unpublish: {e}")
        if self.proxy is not None:
            try:
                self.proxy.stop()
            except Exception as e:
                errs.append(f"proxy stop: {e}")
            self.proxy = None
        for s in self.sockets:
            s.close()
        self.sockets.clear()
        return errs

    def describe(self) -> list[dict[str, str]]:
        return [
            {
                "binding": f"{m.host_binding()}/{m.proto}",
                "path": "relay (userland, ::1)"
                if rules.needs_relay(m)
                else "nat"
                if rules.nat_capable(m)
                else "reserved",
            }
            for m in self.mappings
        ]

    def check(self) -> list[str]:
        """NAT elements of this owner that are missing from the live table."""
        want = {(m.proto, m.host_ip, m.host_port) for m in self.mappings if rules.nat_capable(m)}
        if not want:
            return []
        tag = rules.owner_tag(self.ctx.owner)
        have = {(p.proto, p.host_ip, p.host_port) for p in self.ctx.firewall.published() if p.owner == tag}
        return [
            f"nft element {proto} {ip} port {port} is missing"
            for proto, ip, port in sorted(want - have, key=str)
        ]

    def stats(self) -> dict[str, dict[str, int]]:
        return self.proxy.stats() if self.proxy is not None else {}


def known_if_held(nat: list[Mapping], held: set[tuple[str, int]]) -> list[Mapping] | None:
    """``nat`` when every one of its host bindings ((proto, port)) is held by a reservation of
    the caller: then no other owner can have published those keys, and they may be deleted by
    key with no table read (``Firewall.unpublish(known=)``). None otherwise (read and match the
    owner tag instead)."""
    return nat if all((m.proto, m.host_port) in held for m in nat) else None


def held_bindings(socks: list[socket.socket]) -> set[tuple[str, int]]:
    """(proto, port) of every bound socket in ``socks`` (closed ones are skipped)."""
    out: set[tuple[str, int]] = set()
    for s in socks:
        try:
            port = s.getsockname()[1]
        except OSError:
            continue
        if port:
            out.add(("tcp" if s.type == socket.SOCK_STREAM else "udp", port))
    return out
