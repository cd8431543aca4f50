"""The proxy's counters: slot numbers, their names, and how per-loop counters add up.

A counter set is a plain ``list[int]`` per mapping per event loop, indexed by the slots below:
the cheapest counter there is (one list item increment on the hot path, no lock). Each list is
written only by its own loop thread; ``ProxyServer.stats()`` sums the lists of all loops with
``total`` and names the slots with ``COUNTER_NAMES``.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Slots of a counter list. UDP_DROPPED counts datagrams dropped because the mapping's flow table
#: was full (udp.py). ABANDONED counts TCP clients that left while their backend connect was still
#: pending (both sides released at once), CONNECT_TIMEOUTS backend connects that took longer than
#: the connect timeout (the client got a reset); see tcp.py and loop.py.
ACTIVE, TOTAL, BYTES_IN, BYTES_OUT, UDP_FLOWS, ERRORS, UDP_DROPPED, ABANDONED, CONNECT_TIMEOUTS = range(9)
COUNTER_NAMES = (
    "active",
    "total",
    "bytes_in",
    "bytes_out",
    "udp_flows",
    "errors",
    "udp_dropped",
    "abandoned",
    "connect_timeouts",
)


def new_counters() -> list[int]:
    """A zeroed counter list, one slot per name."""
    return [0] * len(COUNTER_NAMES)


def total(lists: Iterable[list[int]]) -> dict[str, int]:
    """The slot-wise sum of counter lists (one per loop), keyed by counter name."""
    tot = new_counters()
    for c in lists:
        for i, v in enumerate(c):
            tot[i] += v
    return dict(zip(COUNTER_NAMES, tot, strict=True))
