"""Host networking as a publisher: CMD shares the host's network namespace, so there is nothing to
forward. What remains is the article's pitfall, port clashes: every ``--expose``d port must be free
on the host before CMD starts (``PortInUse`` names who holds it), and ``describe`` shows the ports
as the host's own.
"""

from __future__ import annotations

import socket

from ..errors import PortInUse
from ..kernel import sockets as ksockets
from ..model import Mapping
from .base import Bound
from .registry import PublishContext


class HostPublisher:
    name = "host"
    dual_stack = False  # nothing is bound: CMD's own sockets are the host's
    in_kernel = False

    def __init__(self, ctx: PublishContext) -> None:
        self.ctx = ctx

    def publish(self, bound: Bound) -> None:
        """Nothing is bound for host networking; refuse an exposed port that someone holds."""
        for e in self.ctx.spec.expose:
            for port in e.ports:
                for ln in ksockets.holders(e.proto, port):
                    who = ksockets.describe_owner(e.proto, port, ln.ip)
                    raise PortInUse(f"{ln.binding}/{e.proto} (exposed with --network host)", who)

    def relays(self) -> dict[Mapping, socket.socket]:
        return {}

    def serve(self, relays: dict[Mapping, socket.socket] | None = None) -> None:
        """Nothing to relay: CMD's own sockets serve."""

    def unpublish(self) -> list[str]:
        return []

    def describe(self) -> list[dict[str, str]]:
        return [
            {"binding": f"*:{port}/{e.proto}", "path": "host (the command's own socket)"}
            for e in self.ctx.spec.expose
            for port in e.ports
        ]

    def check(self) -> list[str]:
        return []

    def stats(self) -> dict[str, dict[str, int]]:
        return {}
