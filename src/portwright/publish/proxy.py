"""Userland proxy publisher: one in-process relay (portwright.proxy) serves every binding.

The supervisor hands the bound sockets from allocation to a single ProxyServer, so 1 or 10,000
published ports cost one process, unlike docker-proxy's one process per port and family.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from ..model import Mapping
from .base import Bound
from .registry import PublishContext

if TYPE_CHECKING:
    from ..proxy.server import ProxyServer


class ProxyPublisher:
    name = "proxy"
    dual_stack = False  # one listener per family: the relay serves each with its own socket

    def __init__(self, ctx: PublishContext) -> None:
        self.proxy_protocol = ctx.spec.proxy_protocol
        self.udp_idle_timeout = ctx.spec.udp_timeout
        self.connect_timeout = ctx.spec.proxy_connect_timeout
        self.proxy: ProxyServer | None = None
        self.mappings: list[Mapping] = []
        self._relays: dict[Mapping, socket.socket] = {}
        self.in_kernel = False  # nothing of this mechanism lives in the firewall

    def publish(self, bound: Bound) -> None:
        self.mappings = [m for m, _ in bound]
        self._relays = {m: s for m, s in bound if s is not None}

    def relays(self) -> dict[Mapping, socket.socket]:
        return dict(self._relays)

    def serve(self, relays: dict[Mapping, socket.socket] | None = None) -> None:
        from ..proxy.server import ProxyServer

        relays = self._relays if relays is None else relays
        self._relays = dict(relays)
        if not self.mappings:
            self.mappings = list(relays)
        srv = ProxyServer(
            list(relays),
            sockets=relays,
            proxy_protocol=self.proxy_protocol,
            udp_idle_timeout=self.udp_idle_timeout,
            connect_timeout=self.connect_timeout,
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
