"""What the connect-time rewrite (publish mode ``ebpf``) holds in the kernel, for ``who`` and
``audit``: the entries of this state directory's ``svc`` map and which of its programs are
detached. ``read`` touches bpffs (root); the rest is pure over a ``BpfView``.

* ``who`` shows a local path as "rewritten at connect() to ADDR by portwright";
* ``audit`` flags a map entry whose sandbox is gone (``stale``) and a running ebpf sandbox whose
  programs are detached (``degraded``: local clients then take the NAT path).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..model import ANY4, ANY6, IPAddress
from ..publish.ebpf_progs import SvcEntry

if TYPE_CHECKING:
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


def local_ip(label: str) -> IPAddress | None:
    """``127.0.0.1`` / ``[::1]`` path labels of ``who`` as addresses (others: None)."""
    try:
        return ipaddress.ip_address(label.strip("[]"))
    except ValueError:
        return None
