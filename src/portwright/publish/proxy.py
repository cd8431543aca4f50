"""Userland proxy publisher: one in-process relay (portwright.proxy) serves every binding.

The supervisor hands the bound sockets from allocation to a single ProxyServer, so 1 or 10,000
published ports cost one relay, unlike docker-proxy's one process per port and family. The relay
runs ``--proxy-workers`` processes (default one per core, at most 4; proxy/workers.py) sharing
the listeners, so it uses every core under load as docker-proxy does.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from ..model import Mapping
from ..proxy.workers import resolve_workers
from .base import Bound
from .registry import PublishContext

if TYPE_CHECKING:
    from ..proxy.server import ProxyServer


class ProxyPublisher:
    name = "proxy"
    # One [::]:P socket serves both families of a wildcard port (as nat does): 10,000 ports fit
    # under a hard RLIMIT_NOFILE of 20,000. Its IPv4 half (socket None) is its twin.
    dual_stack = True

    def __init__(self, ctx: PublishContext) -> None:
        self.proxy_protocol = ctx.spec.proxy_protocol
        self.udp_idle_timeout = ctx.spec.udp_timeout
        self.connect_timeout = ctx.spec.proxy_connect_timeout
        self.workers = resolve_workers(ctx.spec.proxy_workers)
        self.proxy: ProxyServer | None = None
        self.mappings: list[Mapping] = []
        self._relays: dict[Mapping, socket.socket] = {}
        self._twins: dict[Mapping, Mapping] = {}
        self.in_kernel = False  # nothing of this mechanism lives in the firewall

    def publish(self, bound: Bound) -> None:
        self.mappings = [m for m, _ in bound]
        self._relays = {m: s for m, s in bound if s is not None}
        self._twins = twins_of(self.mappings, self._relays)

    def relays(self) -> dict[Mapping, socket.socket]:
        """Each served mapping with its socket; a dual-stack socket is listed for its IPv4 twin
        too, so that a holder given only this dict (the detached supervisor) finds the pairs."""
        out = dict(self._relays)
        for six, four in self._twins.items():
            out[four] = self._relays[six]
        return out

    def serve(self, relays: dict[Mapping, socket.socket] | None = None) -> None:
        from ..proxy.server import ProxyServer

        relays = self._relays if relays is None else relays
        own, twins = split_twins(relays)
        self._relays = own
        self._twins = twins or self._twins
        if not self.mappings:
            self.mappings = list(relays)
        srv = ProxyServer(
            list(own),
            sockets=own,
            proxy_protocol=self.proxy_protocol,
            udp_idle_timeout=self.udp_idle_timeout,
            connect_timeout=self.connect_timeout,
            twins=self._twins,
            workers=self.workers,
        )
        srv.start()
        self.proxy = srv

    def unpublish(self) -> list[str]:
        if self.proxy is None:
            for s in self._relays.values():
                s.close()
            return []
        try:
            self.proxy.stop()
        except Exception as e:
            return [f"proxy stop: {e}"]
        finally:
            self.proxy = None
        return []

    def describe(self) -> list[dict[str, str]]:
        return [
            {"binding": f"{m.host_binding()}/{m.proto}", "path": "proxy (userland relay)"}
            for m in self.mappings
        ]

    def check(self) -> list[str]:
        if self.mappings and (self.proxy is None or not self.proxy.alive()):
            return ["the userland relay is not running"]
        return []

    def stats(self) -> dict[str, dict[str, int]]:
        return self.proxy.stats() if self.proxy is not None else {}


def split_twins(
    relays: dict[Mapping, socket.socket],
) -> tuple[dict[Mapping, socket.socket], dict[Mapping, Mapping]]:
    """Separate the sockets to serve from IPv4 twins listed with their dual-stack socket (see
    ``relays``); a twin's own copy of the descriptor (passed between processes) is closed."""
    own = {m: s for m, s in relays.items() if not (m.host_ip.version == 4 and s.family == socket.AF_INET6)}
    by_sock = {
        (m.proto, m.host_port): m for m, s in own.items() if s.family == socket.AF_INET6 and m.wildcard
    }
    twins: dict[Mapping, Mapping] = {}
    for m, s in relays.items():
        if m in own:
            continue
        six = by_sock.get((m.proto, m.host_port))
        if six is not None:
            twins[six] = m
        if six is None or s is not own[six]:
            s.close()
    return own, twins


def twins_of(mappings: list[Mapping], relays: dict[Mapping, socket.socket]) -> dict[Mapping, Mapping]:
    """The IPv4 half of each dual-stack ``[::]`` relay socket: a wildcard IPv4 mapping with no socket
    of its own whose proto and host port match it."""
    dual = {(m.proto, m.host_port): m for m in relays if m.wildcard and m.host_ip.version == 6}
    out: dict[Mapping, Mapping] = {}
    for m in mappings:
        if m in relays or not m.wildcard or m.host_ip.version != 4:
            continue
        six = dual.get((m.proto, m.host_port))
        if six is not None:
            out[six] = m
    return out
