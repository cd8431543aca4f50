"""Kernel NAT publisher: nftables map elements, placeholder reservations, and a proxy for ::1.

The kernel rewrites every IPv4 path (external, host addresses, 127.0.0.1 through
route_localnet) and every IPv6 path that it can. What IPv6 cannot DNAT — ``[::1]:P``, whose
loopback source may not leave the host, and an IPv6 binding in front of an IPv4-only sandbox —
is served by a small in-process proxy on exactly those bindings, so ``localhost`` works
whichever way it resolves. All other reservation sockets drop everything they receive.
"""

from __future__ import annotations

import dataclasses
import socket

from ..firewall import nft, rules
from ..model import Mapping
from ..proxy.server import ProxyServer
from .base import Bound
from .reserve import make_placeholder


def needs_proxy(m: Mapping) -> bool:
    """The bindings kernel NAT cannot serve."""
    if m.host_ip.version == 6 and (m.host_ip.is_loopback or m.host_ip.is_unspecified):
        # A wildcard [::]:P socket only ever sees ::1 traffic: every other IPv6 destination is
        # DNATed in prerouting/output before it could reach a local socket.
        return True
    return not rules.nat_capable(m)


class NatPublisher:
    name = "nat"

    def __init__(self) -> None:
        self.owner: str | None = None
        self.sockets: list[socket.socket] = []
        self.proxy: ProxyServer | None = None

    def publish(self, owner: str, bound: Bound) -> None:
        self.owner = owner
        nat = [m for m, _ in bound if rules.nat_capable(m)]
        proxied = {m: s for m, s in bound if needs_proxy(m) and s is not None}
        for m, s in bound:
            if m not in proxied and s is not None:
                self.sockets.append(make_placeholder(s))
        if proxied:
            # ::1 is the host talking to itself: relay it to the sandbox's IPv4 address when it
            # has one, so "localhost" reaches the same server whichever way it resolves (most
            # servers listen on IPv4; an IPv6-only sandbox keeps its IPv6 target).
            v4 = {(m.proto, m.host_port, m.container_port): m.container_ip
                  for m, _ in bound if m.container_ip.version == 4}
            relay = {dataclasses.replace(m, container_ip=v4.get((m.proto, m.host_port, m.container_port),
                                                                  m.container_ip)): s
                     for m, s in proxied.items()}
            srv = ProxyServer(list(relay), sockets=relay)
            srv.start()
            self.proxy = srv
        if nat:
            # One transaction; it also flushes the published UDP ports' conntrack entries, so a
            # client that sent before the rule existed is not stuck on the host (Docker #8795).
            nft.publish(owner, nat)

    def unpublish(self) -> list[str]:
        errs: list[str] = []
        if self.owner is not None:
            try:
                nft.unpublish(self.owner)
            except Exception as e:  # teardown goes on
                errs.append(f"nft unpublish: {e}")
        if self.proxy is not None:
            try:
                self.proxy.stop()
            except Exception as e:
                errs.append(f"proxy stop: {e}")
        for s in self.sockets:
            s.close()
        self.sockets.clear()
        return errs

    def stats(self) -> dict[str, dict[str, int]]:
        return self.proxy.stats() if self.proxy is not None else {}
