"""``--firewall host``: published ports obey the host firewall as a host service would (issue 16).

Kernel NAT rewrites a published port's packets in prerouting, so they are routed through FORWARD and
never meet the INPUT rules where ufw (``ufw deny 8080``), firewalld zones, fail2ban and hand-written
nft input chains live: the "bypass" Docker users have reported for ten years (moby #4737, #22054).
This publisher removes that path for every binding other machines can reach:

* a non-loopback binding (``0.0.0.0:P``, ``[::]:P``, one host address) gets no DNAT element at all;
  the userland relay (``publish/proxy.py``, built through the registry) listens on exactly that
  host address and port, so a connection takes the INPUT path and the host firewall decides. PROXY
  v2 (``--proxy-protocol``) gives the sandbox the client's address;
* loopback bindings (``127.0.0.1:P``, ``[::1]:P``) are served by the nat publisher as usual;
* local clients keep the fast path: an IPv4 wildcard binding also gets a ``127.0.0.1:P`` DNAT element,
  which only locally generated packets can use (127.0.0.0/8 from any other interface is dropped
  before DNAT by the ``guard`` chain).

Which binding goes to which mechanism is decided by the mapping alone (``loopback``), so a
supervisor can serve relays handed over from a builder process without having run ``publish``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket

from ..model import ANY4, Mapping
from .base import Bound, Publisher
from .registry import PublishContext, create

LOCAL4 = ipaddress.IPv4Address("127.0.0.1")  # the fast path's address for local clients


def local_fast_path(mappings: list[Mapping]) -> list[Mapping]:
    """127.0.0.1 twins of the IPv4 wildcard mappings (DNAT for locally generated packets only)."""
    return [
        dataclasses.replace(m, host_ip=LOCAL4)
        for m in mappings
        if m.host_ip == ANY4 and m.container_ip.version == 4
    ]


def split(bound: Bound) -> tuple[Bound, Bound]:
    """(loopback bindings for nat, every other binding for the relay)."""
    return [(m, s) for m, s in bound if m.loopback], [(m, s) for m, s in bound if not m.loopback]


class FirewallHostPublisher:
    name = "firewall-host"

    def __init__(self, ctx: PublishContext) -> None:
        self.ctx = ctx
        self.relay: Publisher = create("proxy", ctx)
        self.nat: Publisher = create("nat", ctx)
        self.dual_stack = self.relay.dual_stack
        self.mappings: list[Mapping] = []

    @property
    def in_kernel(self) -> bool:
        return self.nat.in_kernel

    def publish(self, bound: Bound) -> None:
        self.mappings = [m for m, _ in bound]
        loop, other = split(bound)
        fast: Bound = [(m, None) for m in local_fast_path([m for m, _ in other])]
        self.relay.publish(other)
        self.nat.publish(loop + fast)

    def relays(self) -> dict[Mapping, socket.socket]:
        return {**self.relay.relays(), **self.nat.relays()}

    def serve(self, relays: dict[Mapping, socket.socket] | None = None) -> None:
        if relays is None:
            relays = self.relays()
        mine = {m: s for m, s in relays.items() if not m.loopback}
        if mine:
            self.relay.serve(mine)
        self.nat.serve({m: s for m, s in relays.items() if m.loopback})

    def unpublish(self) -> list[str]:
        return self.relay.unpublish() + self.nat.unpublish()

    def describe(self) -> list[dict[str, str]]:
        out = []
        for m in self.mappings:
            path = "nat (loopback)" if m.loopback else "relay on the host port (host firewall decides)"
            out.append({"binding": f"{m.host_binding()}/{m.proto}", "path": path})
        return out

    def check(self) -> list[str]:
        return self.relay.check() + self.nat.check()

    def stats(self) -> dict[str, dict[str, int]]:
        return {**self.relay.stats(), **self.nat.stats()}
