"""Userland proxy publisher: one in-process relay (portwright.proxy) serves every binding.

The supervisor hands the bound sockets from allocation to a single ProxyServer, so 1 or 10,000
published ports cost one process, unlike docker-proxy's one process per port and family.
"""

from __future__ import annotations

from ..proxy.server import ProxyServer
from .base import Bound


class ProxyPublisher:
    name = "proxy"

    def __init__(self, proxy_protocol: bool = False, udp_idle_timeout: float = 90.0) -> None:
        self.proxy_protocol = proxy_protocol
        self.udp_idle_timeout = udp_idle_timeout
        self.proxy: ProxyServer | None = None

    def publish(self, owner: str, bound: Bound) -> None:
        socks = {m: s for m, s in bound if s is not None}
        srv = ProxyServer(list(socks), sockets=socks, proxy_protocol=self.proxy_protocol,
                          udp_idle_timeout=self.udp_idle_timeout)
        srv.start()
        self.proxy = srv

    def unpublish(self) -> list[str]:
        if self.proxy is None:
            return []
        try:
            self.proxy.stop()
        except Exception as e:
            return [f"proxy stop: {e}"]
        return []

    def stats(self) -> dict[str, dict[str, int]]:
        return self.proxy.stats() if self.proxy is not None else {}
