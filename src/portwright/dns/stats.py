"""What the resolver measures about itself (pure): per-query service time, collector pauses, rebuilds.

A client's latency is the resolver's own work plus everything around it: the wake-up of a process
on a busy host, the veth and bridge, the client's own loop. To tell them apart the resolver times
each UDP query from the datagram's arrival in user space (``recvfrom`` returned) to its answer
handed to the kernel (``sendto`` returned), and times the garbage collector's passes and its own
table rebuilds, which are the two things that could stall a query behind it. ``bench --dns``
reads these through the control socket (``stats``) next to what its clients measured.

Service times are kept in a ring of the last ``RING`` queries (an ``array``: no object per
sample, so keeping them does not itself feed the collector).
"""

from __future__ import annotations

import gc
import time
from array import array
from typing import Any

RING = 65_536  # samples kept; a bench round is 10,000 sequential queries plus a throughput burst


def _pct(xs: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted ``xs``, in microseconds."""
    return xs[min(len(xs) - 1, int(q * len(xs)))] / 1e3 if xs else 0.0


class Stats:
    """Counters of one resolver; ``snapshot`` is what ``stats`` answers, ``reset`` starts over."""

    def __init__(self) -> None:
        self.ring = array("q", bytes(8 * RING))
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.gc_passes = [0, 0, 0]
        self.gc_ns_total = 0
        self.gc_ns_max = 0
        self.rebuilds = 0
        self.rebuild_ns_total = 0
        self.rebuild_ns_max = 0
        self._gc_t0 = 0

    def query(self, ns: int) -> None:
        self.ring[self.n % RING] = ns
        self.n += 1

    def rebuilt(self, ns: int) -> None:
        self.rebuilds += 1
        self.rebuild_ns_total += ns
        self.rebuild_ns_max = max(self.rebuild_ns_max, ns)

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """A ``gc.callbacks`` hook: how often the collector ran, and for how long."""
        if phase == "start":
            self._gc_t0 = time.perf_counter_ns()
            return
        took = time.perf_counter_ns() - self._gc_t0
        self.gc_passes[min(2, int(info.get("generation", 0)))] += 1
        self.gc_ns_total += took
        self.gc_ns_max = max(self.gc_ns_max, took)

    def install(self) -> None:
        gc.callbacks.append(self.on_gc)

    def snapshot(self) -> dict[str, Any]:
        xs = sorted(self.ring[: min(self.n, RING)])
        return {
            "queries": self.n,
            "service_us": {p: _pct(xs, q) for p, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))}
            | {"max": xs[-1] / 1e3 if xs else 0.0},
            "gc_passes": list(self.gc_passes),
            "gc_ms_total": self.gc_ns_total / 1e6,
            "gc_ms_max": self.gc_ns_max / 1e6,
            "rebuilds": self.rebuilds,
            "rebuild_ms_total": self.rebuild_ns_total / 1e6,
            "rebuild_ms_max": self.rebuild_ns_max / 1e6,
        }
