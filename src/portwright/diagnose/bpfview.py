"""What the connect-time rewrite (publish mode ``ebpf``) holds in the kernel, for ``who`` and
``audit``: the entries of this state directory's ``svc`` map and which of its programs are
detached. ``read`` touches bpffs (root); the rest is pure over a ``BpfView``.

* ``who`` shows a local path as "rewritten at connect() to ADDR by portwright";
* ``audit`` checks the map against live sandboxes both ways: an entry whose sandbox is gone
  (``stale``), a running ebpf sandbox whose entries are missing, and one whose programs are
  detached (both ``degraded``: local clients then take the NAT path).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..model import ANY4, ANY6, IPAddress
from ..publish.ebpf_progs import SvcEntry

if TYPE_CHECKING:
    from ..state import SandboxRecord
    from .snapshot import Snapshot

Raw = tuple[str, str, str, str, str, str]  # severity, code, subject, message, fix, owner


@dataclass(frozen=True, slots=True)
class BpfView:
    entries: tuple[SvcEntry, ...] = ()
    detached: tuple[str, ...] = ()  # programs of the set not attached now (while maps exist)
    note: str = ""

    def rewrite_for(self, proto: str, ip: IPAddress, port: int) -> SvcEntry | None:
        """The entry a local client dialling ip:port is rewritten by: exact address, then the
        wildcard of its family (the programs' own order); None when detached."""
        if self.detached:
            return None
        wild = ANY4 if ip.version == 4 else ANY6
        for want in (ip, wild):
            for e in self.entries:
                if e.proto == proto and e.host_port == port and e.host_ip == want:
                    return e
        return None


def read() -> BpfView:
    """This state dir's svc entries and detached programs (empty when nothing is pinned)."""
    from ..kernel.bpf.syscall import BpfError
    from ..publish import ebpf

    rw = ebpf.RewriteSet()
    try:
        maps = rw.open_maps()
        if maps is None:
            return BpfView()
        try:
            from ..publish.ebpf_progs import decode_svc

            entries = tuple(decode_svc(k, v) for k, v in maps.svc.items())
        finally:
            maps.close()
        return BpfView(entries, tuple(rw.missing_links()))
    except (BpfError, OSError) as e:
        return BpfView(note=f"bpf maps not readable: {str(e).splitlines()[0]}")


def _ep(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def bpf_findings(snap: Snapshot) -> list[Raw]:
    """stale: an svc entry no live sandbox owns; degraded: a running ebpf sandbox whose programs
    are detached."""
    from ..owners import sandbox_owner
    from ..publish.ebpf import owner_hash

    live = {owner_hash(sandbox_owner(r.id)): r for r in snap.sandboxes if snap.alive(r)}
    out: list[Raw] = []
    for e in snap.bpf.entries:
        if e.owner in live:
            continue
        subject = f"{e.proto} {_ep(e.host_ip, e.host_port)}"
        out.append(
            (
                "low",
                "stale",
                subject,
                f"a connect-time rewrite to {_ep(e.ip, e.port)} has no live sandbox",
                "run any portwright command (reconcile removes it), or remove the pins under /sys/fs/bpf/portwright",
                "",
            )
        )
    out += _missing_entries(snap, live)
    if snap.bpf.detached:
        for r in snap.sandboxes:
            if snap.alive(r) and r.sandbox.publish_mode == "ebpf" and r.sandbox.mappings:
                out.append(
                    (
                        "medium",
                        "degraded",
                        f"sandbox {r.name}",
                        "publish mode ebpf but its programs are detached: "
                        + ", ".join(snap.bpf.detached)
                        + "; local clients take the NAT path",
                        "run any portwright command: it attaches them again",
                        f"sandbox {r.name!r} ({r.id})",
                    )
                )
    return out


def _missing_entries(snap: Snapshot, live: dict[int, SandboxRecord]) -> list[Raw]:
    """degraded: a running ebpf sandbox whose svc entries (some or all) are not in the map."""
    from ..publish.ebpf_progs import IPPROTO

    if snap.bpf.note:
        return []  # the map was not readable: nothing to compare (the note says why)
    have: dict[int, set[tuple[str, IPAddress, int]]] = {}
    for e in snap.bpf.entries:
        have.setdefault(e.owner, set()).add((e.proto, e.host_ip, e.host_port))
    out: list[Raw] = []
    for owner, r in live.items():
        if r.sandbox.publish_mode != "ebpf":
            continue
        want = [m for m in r.sandbox.mappings if m.proto in IPPROTO]
        gone = [m for m in want if (m.proto, m.host_ip, m.host_port) not in have.get(owner, set())]
        if not gone:
            continue
        first = gone[0]
        out.append(
            (
                "medium",
                "degraded",
                f"sandbox {r.name}",
                f"publish mode ebpf but {len(gone)} of its {len(want)} connect-time rewrite entries are "
                f"missing (first: {first.proto} {_ep(first.host_ip, first.host_port)}); "
                "local clients of those take the NAT path",
                f"restart it ('portwright restart {r.name}') to publish them again",
                f"sandbox {r.name!r} ({r.id})",
            )
        )
    return out


def local_ip(label: str) -> IPAddress | None:
    """``127.0.0.1`` / ``[::1]`` path labels of ``who`` as addresses (others: None)."""
    try:
        return ipaddress.ip_address(label.strip("[]"))
    except ValueError:
        return None
