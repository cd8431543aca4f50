"""When to put the firewall back: nftables change events turned into "re-check now" deadlines.

A firewall reload (``nft flush ruleset`` from ``nftables.service``, firewalld, a script) removes
portwright's table with everything in it: the networks' isolation and egress rules and every
published port. The processes that stay alive for sandboxes watch for it and re-apply what is
theirs (``Engine.restore``, through the firewall seam): a foreground supervisor for its own
sandbox, the fork server for every detached one, a CNI holder for its attachment.

``FirewallWatch`` is the timing half, shared by their ``select`` loops: it subscribes to the
kernel's nftables events (``kernel.nftevents``), and after a burst of changes has settled for
``SETTLE_SECONDS`` says "due". Between events nothing polls hard: a slow safety re-check every
``FALLBACK_SECONDS`` covers a host where the event group cannot be joined. The re-check itself is
cheap when nothing is missing (one ``nft list table``, no write), and re-applying causes one more
event whose re-check then finds the table whole.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .kernel.nftevents import NftEvents, open_events

# A reload is one transaction, but scripts run several in a row: wait this long after the last
# event before reading the table, so we repair once, not mid-reload. Well inside the 2 s budget.
SETTLE_SECONDS = 0.1
# The safety net where events are unavailable, and a check now and then where they are.
FALLBACK_SECONDS = 30.0
NO_EVENTS_FALLBACK_SECONDS = 1.5  # without events, still within the 2 s promise


class FirewallWatch:
    """Deadlines for re-checking the firewall, driven by nftables events."""

    def __init__(self, events: NftEvents | None = None, *, subscribe: bool = True) -> None:
        self.events = events if events is not None else (open_events() if subscribe else None)
        self.period = FALLBACK_SECONDS if self.events is not None else NO_EVENTS_FALLBACK_SECONDS
        self.due = time.monotonic() + self.period

    def fds(self) -> Sequence[NftEvents]:
        """What the caller's ``select`` must watch (nothing when events are unavailable)."""
        return [self.events] if self.events is not None else []

    def ready(self, ready: Sequence[object]) -> None:
        """Feed ``select``'s ready list: a change makes a re-check due after it settles."""
        if self.events is not None and self.events in ready and self.events.drain():
            self.due = min(self.due, time.monotonic() + SETTLE_SECONDS)

    def take(self, now: float | None = None) -> bool:
        """True once a re-check is due; the next one is then the slow fallback."""
        now = time.monotonic() if now is None else now
        if now < self.due:
            return False
        self.due = now + self.period
        return True

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None
