"""``portwright ports``: every published port on the host, with its owner and target.

Like the PORTS column of ``docker ps``, but host-wide and from the kernel's point of view: the
DNAT publications in nftables (portwright's maps, Docker's iptables-nft rules, CNI portmap),
the proxies and placeholders that hold sockets for them, and plain host listeners. A row whose
owner is gone is marked stale. Pure over a Snapshot.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from ..firewall.rules import nat_capable
from ..model import IPAddress, Mapping
from ..owners import parse_owner
from .nftview import NatEntry, nat_entries
from .snapshot import (
    APPLICATION,
    DOCKER_PROXY,
    PLACEHOLDERS,
    PW_ORPHAN,
    PW_PROXY,
    UNKNOWN,
    Holder,
    Snapshot,
    fmt_ep,
)


@dataclass(frozen=True, slots=True)
class PortRow:
    proto: str
    host_ip: IPAddress | None  # None: any local address of either family (an inet rule)
    port: int
    port_end: int
    mechanism: str  # nat | proxy | docker-proxy | placeholder | listener
    owner_kind: str  # sandbox | container | cni | process | unknown
    owner: str
    target_ip: IPAddress | None = None
    target_port: int | None = None
    stale: bool = False
    why_stale: str = ""
    hooks: tuple[str, ...] = ()
    external: bool = True  # reachable from other machines by its rule/socket (not loopback-only)
    pid: int | None = None
    degraded: str = ""  # a publication the kernel should serve and does not (issue 13): why

    @property
    def binding(self) -> str:
        ports = str(self.port) if self.port == self.port_end else f"{self.port}-{self.port_end}"
        if self.host_ip is None:
            return f"*:{ports}"
        h = f"[{self.host_ip}]" if self.host_ip.version == 6 else str(self.host_ip)
        return f"{h}:{ports}"

    @property
    def target(self) -> str:
        return fmt_ep(self.target_ip, self.target_port) if self.target_ip is not None else ""

    @property
    def wildcard(self) -> bool:
        return self.host_ip is None or self.host_ip.is_unspecified

    @property
    def loopback(self) -> bool:
        return self.host_ip is not None and self.host_ip.is_loopback

    def to_json(self) -> dict[str, Any]:
        return {
            "proto": self.proto,
            "host": self.binding,
            "host_ip": str(self.host_ip) if self.host_ip else None,
            "port": self.port,
            "port_end": self.port_end,
            "mechanism": self.mechanism,
            "owner_kind": self.owner_kind,
            "owner": self.owner,
            "target": self.target or None,
            "stale": self.stale,
            "why_stale": self.why_stale or None,
            "hooks": list(self.hooks),
            "pid": self.pid,
            "degraded": self.degraded or None,
        }


def _entry_host(e: NatEntry) -> list[IPAddress | None]:
    if e.daddr_neg or not e.daddrs:
        if e.family == 4:
            return [ipaddress.IPv4Address("0.0.0.0")]
        if e.family == 6:
            return [ipaddress.IPv6Address("::")]
        return [None]
    return [d.network_address if d.prefixlen == d.max_prefixlen else d.network_address for d in e.daddrs]


def owner_of_entry(snap: Snapshot, e: NatEntry) -> tuple[str, str, bool, str]:
    """(owner kind, owner name, stale?, why) of one DNAT publication."""
    tag = e.owner or ""
    owner = parse_owner(tag)
    if owner.kind == "sandbox":
        rec = snap.sandbox_by_id(owner.name)
        if rec is None:
            return "sandbox", owner.name[:12], True, f"rule tagged {tag} but no sandbox with that id exists"
        if not snap.alive(rec):
            return "sandbox", rec.name, True, f"sandbox {rec.name}'s supervisor is not running"
        return "sandbox", rec.name, False, ""
    if owner.kind == "cni":
        return "cni", owner.cni.shown_id if owner.cni else owner.name[:12], False, ""
    if e.to_addr is None:
        return "unknown", "?", False, ""
    ep = snap.resolve(e.to_addr)
    if ep.kind in ("sandbox", "container"):
        return ep.kind, ep.name or str(ep.ip), False, ""
    if ep.kind == "host":
        return "process", "this host", False, ""
    docker_net = snap.docker.in_docker_subnet(e.to_addr)
    pw_net = snap.sandbox_network_of(e.to_addr)
    if snap.docker.available or pw_net:
        where = (
            f" (Docker network {docker_net})"
            if docker_net
            else f" (portwright network {pw_net})"
            if pw_net
            else ""
        )
        return "unknown", str(e.to_addr), True, f"no running container or sandbox has {e.to_addr}{where}"
    return "unknown", str(e.to_addr), False, ""


def _nat_rows(snap: Snapshot) -> list[PortRow]:
    merged: dict[tuple[Any, ...], PortRow] = {}
    for e in nat_entries(snap.ruleset):
        kind, name, stale, why = owner_of_entry(snap, e)
        lo_only = any(not neg and name_ == "lo" for neg, name_ in e.iif)
        for host in _entry_host(e):
            for lo, hi in e.ports or ((0, 0),):
                if lo == 0:
                    continue
                key = (e.proto, host, lo, hi, e.to_addr, e.to_port, id(e.rule), e.owner)
                prev = merged.get(key)
                hooks = tuple(sorted({*(prev.hooks if prev else ()), e.hook}))
                external = (prev.external if prev else False) or (e.hook == "prerouting" and not lo_only)
                merged[key] = PortRow(
                    e.proto or "tcp",
                    host,
                    lo,
                    hi,
                    "nat",
                    kind,
                    name,
                    e.to_addr,
                    e.to_port,
                    stale,
                    why,
                    hooks,
                    external,
                )
    return list(merged.values())


def _loopback_relay(snap: Snapshot, name: str, ip: IPAddress) -> bool:
    """Is this a kernel-path sandbox's ``[::]:P`` relay socket, which only ever sees ``[::1]``
    clients because NAT serves every other IPv6 destination (``firewall.rules.needs_relay``)?"""
    if ip.version != 6 or not ip.is_unspecified:
        return False
    rec = next((r for r in snap.sandboxes if r.name == name), None)
    return rec is not None and rec.sandbox.publish_mode in ("nat", "ebpf") and rec.sandbox.ip6 is not None


def _listener_row(snap: Snapshot, proto: str, ip: IPAddress, port: int, h: Holder) -> PortRow:
    if h.kind in (DOCKER_PROXY, PW_PROXY):
        tgt = h.proxy_to
        tip, tport = tgt if tgt else (None, None)
        if h.sandbox:
            if _loopback_relay(snap, h.sandbox, ip):
                ip = ipaddress.IPv6Address("::1")  # what it serves; NAT owns [::]:P
                return PortRow(
                    proto,
                    ip,
                    port,
                    port,
                    "proxy",
                    "sandbox",
                    h.sandbox,
                    tip,
                    tport,
                    external=False,
                    pid=h.pid,
                )
            return PortRow(proto, ip, port, port, "proxy", "sandbox", h.sandbox, tip, tport, pid=h.pid)
        if tgt is not None:
            ep = snap.resolve(tgt[0])
            if ep.kind in ("sandbox", "container"):
                return PortRow(proto, ip, port, port, h.kind, ep.kind, ep.name or "", tip, tport, pid=h.pid)
            stale = snap.docker.available
            return PortRow(
                proto,
                ip,
                port,
                port,
                h.kind,
                "unknown",
                str(tgt[0]),
                tip,
                tport,
                stale=stale,
                why_stale=f"{h.kind} pid {h.pid} forwards to {fmt_ep(*tgt)}, which no running "
                "container or sandbox has"
                if stale
                else "",
                pid=h.pid,
            )
        return PortRow(proto, ip, port, port, h.kind, "unknown", f"pid {h.pid}", pid=h.pid)
    if h.kind in PLACEHOLDERS:
        kind, name = ("sandbox", h.sandbox) if h.sandbox else ("process", f"pid {h.pid} {h.comm}")
        return PortRow(proto, ip, port, port, "placeholder", kind, name or "", pid=h.pid)
    if h.kind == PW_ORPHAN:
        return PortRow(
            proto,
            ip,
            port,
            port,
            "listener",
            "process",
            f"pid {h.pid} {h.comm}",
            stale=True,
            why_stale=f"portwright process {h.pid} holds the port but no sandbox records it",
            pid=h.pid,
        )
    if h.kind == APPLICATION and (h.sandbox or h.container):
        kind = "sandbox" if h.sandbox else "container"
        return PortRow(proto, ip, port, port, "host", kind, (h.sandbox or h.container) or "", pid=h.pid)
    if h.kind == UNKNOWN:
        return PortRow(proto, ip, port, port, "listener", "unknown", "no visible process")
    return PortRow(proto, ip, port, port, "listener", "process", f"pid {h.pid} {h.comm}", pid=h.pid)


def _held_by(rows: list[PortRow], m: Mapping) -> str:
    """What holds ``m``'s host port now that NAT does not serve it (for the degraded note)."""
    kinds = sorted({r.mechanism for r in rows if r.port == m.host_port and r.proto == m.proto})
    if "proxy" in kinds:
        return "traffic that still arrives is served by the userland relay, or by nothing"
    return "connections land on the placeholder socket, which never answers"


def degraded_rows(snap: Snapshot, rows: list[PortRow]) -> list[PortRow]:
    """A row for each NAT publication of a running sandbox that the kernel no longer holds: a
    firewall reload or someone's 'nft delete' took it. Never shown as if all were well."""
    out: list[PortRow] = []
    served = {
        (r.owner, r.proto, r.port, str(r.host_ip) if r.host_ip is not None else "*")
        for r in rows
        if r.mechanism == "nat" and r.owner_kind == "sandbox"
    }
    for rec in snap.sandboxes:
        if rec.sandbox.publish_mode != "nat" or not snap.alive(rec):
            continue
        for m in rec.sandbox.mappings:
            if not nat_capable(m):
                continue
            if {
                (rec.name, m.proto, m.host_port, str(m.host_ip)),
                (rec.name, m.proto, m.host_port, "*"),
            } & served:
                continue
            why = f"no DNAT element in table inet portwright (firewall reloaded?); {_held_by(rows, m)}"
            out.append(
                PortRow(
                    m.proto,
                    m.host_ip,
                    m.host_port,
                    m.host_port,
                    "nat",
                    "sandbox",
                    rec.name,
                    m.container_ip,
                    m.container_port,
                    degraded=why,
                )
            )
    return out


def port_rows(snap: Snapshot, include_listeners: bool = True) -> list[PortRow]:
    rows = _nat_rows(snap)
    for ln in snap.listeners:
        h = snap.classify(ln.processes[0] if ln.processes else None, ln)
        if not include_listeners and h.kind in (APPLICATION, UNKNOWN) and not (h.sandbox or h.container):
            continue
        rows.append(_listener_row(snap, ln.proto, ln.ip, ln.port, h))
    rows += degraded_rows(snap, rows)
    order = {"nat": 0, "proxy": 1, "docker-proxy": 1, "host": 2, "placeholder": 3, "listener": 4}
    rows.sort(key=lambda r: (r.port, r.proto, order.get(r.mechanism, 5), str(r.host_ip)))
    return rows


HEADERS = ("PROTO", "HOST", "VIA", "OWNER", "TARGET", "")


def table_rows(rows: list[PortRow]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for r in rows:
        owner = f"{r.owner_kind} {r.owner}" if r.owner_kind in ("sandbox", "container", "cni") else r.owner
        flag = f"STALE: {r.why_stale}" if r.stale else f"MISSING: {r.degraded}" if r.degraded else ""
        if r.mechanism == "nat" and not r.external:
            flag = (flag + " " if flag else "") + "(host only)"
        out.append((r.proto, r.binding, r.mechanism, owner, r.target or "-", flag))
    return out
