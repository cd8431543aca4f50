"""``portwright who PORT[/PROTO]``: follow one host port from socket to the process that serves it.

For each way a client can reach the port (127.0.0.1, [::1], and the host's own v4/v6 address
as seen from another machine) the answer is the path a connection takes: a DNAT rule (whose
owner is named by its comment or its target address) or the socket that accepts it (an
application, a proxy, a placeholder), then the sandbox or container behind it, then the
process listening inside that namespace. Paths that end differently per family are reported
as differences: the article's ``::1`` placeholder pitfall. Pure over a Snapshot.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadInput, PortwrightError
from ..kernel.sockets import Listener
from ..model import PROTOS, IPAddress
from ..owners import parse_owner
from .nftview import Outcome, Packet, walk
from .snapshot import PLACEHOLDERS, Endpoint, Holder, Snapshot, fmt_ep

LOOP4 = ipaddress.IPv4Address("127.0.0.1")
LOOP6 = ipaddress.IPv6Address("::1")


def parse_port(text: str) -> tuple[int, str]:
    """``8080`` or ``8080/udp`` -> (8080, "udp"); one-line BadInput otherwise."""
    port_s, _, proto = text.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in PROTOS:
        raise BadInput(f"protocol {proto!r} in {text!r} is not one of tcp, udp, sctp; write PORT or PORT/udp")
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise BadInput(f"port {port_s!r} in {text!r} is not a number in 1-65535; write e.g. 8080 or 53/udp")
    return int(port_s), proto


@dataclass(frozen=True, slots=True)
class Inner:
    """What listens inside the target's namespace on the target port."""

    listeners: tuple[tuple[Listener, Holder], ...] = ()
    note: str = ""


NOTHING_INSIDE = "nothing listens"  # how inner_of's note begins when no socket takes the target


@dataclass(frozen=True, slots=True)
class Path:
    """Where one kind of client ends up."""

    label: str  # e.g. "127.0.0.1", "[::1]", "198.51.100.7 (other machines)"
    via: str  # dnat | rewrite (ebpf, at connect()) | socket | dropped | nothing
    detail: str  # the rule text, or the socket binding
    holder: Holder | None = None
    target: Endpoint | None = None
    target_port: int | None = None
    owner_tag: str | None = None
    inner: Inner | None = None
    trace: tuple[str, ...] = ()

    @property
    def nothing_inside(self) -> bool:
        """It reaches a sandbox or container, but nothing listens there on the target address:
        the connection is refused (NAT) or reset (a relay) inside."""
        return (
            self.inner is not None and not self.inner.listeners and self.inner.note.startswith(NOTHING_INSIDE)
        )

    @property
    def end(self) -> str:
        """A comparable summary of where the path ends (for the differences check)."""
        empty = f" ({self.inner.note})" if self.nothing_inside and self.inner else ""
        if self.via in ("dnat", "rewrite") and self.target:
            return f"{self.target.kind} {self.target.name or self.target.ip}{empty}"
        if self.via == "socket" and self.holder:
            if self.holder.proxy_to and self.target:
                return f"{self.target.kind} {self.target.name or self.target.ip}{empty}"
            if self.holder.kind in PLACEHOLDERS:
                return f"placeholder {self.holder.kind}"
            return f"process {self.holder.pid}"
        return self.via


@dataclass
class WhoReport:
    port: int
    proto: str
    holders: list[tuple[Listener, Holder]] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    remapped: list[str] = field(default_factory=list)  # host-remap sandboxes binding it as another port

    @property
    def owned(self) -> bool:
        return bool(self.holders) or any(p.via in ("dnat", "rewrite") for p in self.paths)

    def summary(self) -> str:
        for p in self.paths:
            if p.target is not None and p.target.kind in ("sandbox", "container"):
                return f"{p.target.kind} {p.target.name} ({fmt_ep(p.target.ip, p.target_port)})"
        for _ln, h in self.holders:
            return h.describe()
        for p in self.paths:
            if p.via == "dnat" and p.target is not None:
                return f"DNAT to {fmt_ep(p.target.ip, p.target_port)} ({p.target.kind})"
        return "nothing: no socket holds this port and no NAT rule rewrites it"

    def to_json(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "proto": self.proto,
            "owned": self.owned,
            "summary": self.summary(),
            "holders": [{"binding": ln.binding, **holder_json(h)} for ln, h in self.holders],
            "paths": [path_json(p) for p in self.paths],
            "differences": self.differences,
            "notes": self.notes,
            "remapped": self.remapped,
        }


def holder_json(h: Holder) -> dict[str, Any]:
    return {
        "kind": h.kind,
        "pid": h.pid,
        "comm": h.comm,
        "cmdline": h.cmdline,
        "sandbox": h.sandbox,
        "container": h.container,
        "proxy_to": fmt_ep(*h.proxy_to) if h.proxy_to else None,
    }


def endpoint_json(e: Endpoint | None, port: int | None) -> dict[str, Any] | None:
    if e is None:
        return None
    return {
        "kind": e.kind,
        "name": e.name,
        "ip": str(e.ip),
        "port": port,
        "network": e.network,
        "id": e.ident,
    }


def path_json(p: Path) -> dict[str, Any]:
    return {
        "client": p.label,
        "via": p.via,
        "detail": p.detail,
        "owner_tag": p.owner_tag,
        "holder": holder_json(p.holder) if p.holder else None,
        "target": endpoint_json(p.target, p.target_port),
        "inner": None
        if p.inner is None
        else {
            "note": p.inner.note,
            "listeners": [{"binding": ln.binding, **holder_json(h)} for ln, h in p.inner.listeners],
        },
        "trace": list(p.trace),
    }


def best_listener(lns: list[Listener], proto: str, ip: IPAddress, port: int) -> Listener | None:
    """The socket the kernel would deliver ip:port to: exact address first, then the wildcard."""
    cands = [ln for ln in lns if ln.proto == proto and ln.port == port]
    for ln in cands:
        if ln.ip == ip:
            return ln
    for ln in cands:
        if ln.ip.is_unspecified and ln.ip.version == ip.version:
            return ln
    if ip.version == 4:
        for ln in cands:
            if ln.ip.is_unspecified and ln.ip.version == 6 and ln.v6only is not True:
                return ln
        for ln in cands:  # a dual-stack socket bound to ::ffff:a.b.c.d
            if ln.ip.version == 6 and ln.ip.ipv4_mapped == ip:
                return ln
    return None


def accepts(ln: Listener, ip: IPAddress) -> bool:
    """Would a socket bound like ln receive a connection to ip (same port)?"""
    if ln.ip == ip:
        return True
    if ln.ip.is_unspecified:
        return ln.ip.version == ip.version or (ip.version == 4 and ln.v6only is not True)
    return ip.version == 4 and ln.ip.version == 6 and ln.ip.ipv4_mapped == ip


def inner_of(snap: Snapshot, target: Endpoint, proto: str, port: int) -> Inner:
    if target.kind not in ("sandbox", "container"):
        return Inner(note="")
    if not target.netns:
        return Inner(note=f"{target.kind} {target.name} is not running; nothing to enter")
    try:
        lns = snap.inner(target.netns)
    except PortwrightError as e:
        return Inner(note=f"could not read sockets inside {target.name}: {e}")
    hits = [ln for ln in lns if ln.proto == proto and ln.port == port and accepts(ln, target.ip)]
    if not hits:
        return Inner(
            note=f"{NOTHING_INSIDE} on {fmt_ep(target.ip, port)}/{proto} inside {target.name}: "
            "connections are refused there"
        )
    return Inner(
        listeners=tuple((ln, snap.classify(ln.processes[0] if ln.processes else None, ln)) for ln in hits)
    )


def _probes(snap: Snapshot, proto: str, port: int) -> list[tuple[str, Packet]]:
    out = [
        ("127.0.0.1", Packet("output", proto, LOOP4, port)),
        ("[::1]", Packet("output", proto, LOOP6, port)),
    ]
    if snap.host4:
        out.append(
            (f"{snap.host4} (other machines)", Packet("prerouting", proto, snap.host4, port, snap.host_if))
        )
    if snap.host6:
        out.append(
            (f"[{snap.host6}] (other machines)", Packet("prerouting", proto, snap.host6, port, snap.host_if))
        )
    return out


def follow(snap: Snapshot, label: str, pkt: Packet) -> Path:
    """Where a connection of one kind ends: NAT first (as the kernel does), then the sockets."""
    out: Outcome = walk(snap.ruleset, pkt)
    if out.kind == "drop":
        return Path(label, "dropped", out.rule.text if out.rule else "policy drop", trace=out.trace)
    if out.kind == "dnat" and out.to_addr is not None:
        target = snap.resolve(out.to_addr)
        tport = out.to_port or pkt.dport
        if target.kind == "host" and out.to_addr.is_loopback is False and out.to_addr not in snap.local_addrs:
            target = Endpoint(out.to_addr, "unknown")
        tag = out.owner
        owner = parse_owner(tag or "")
        if target.kind == "unknown" and owner.kind == "sandbox":
            rec = snap.sandbox_by_id(owner.name)
            if rec is not None:
                target = Endpoint(out.to_addr, "sandbox", rec.name, rec.sandbox.network, None, rec.id)
        inner = inner_of(snap, target, pkt.proto, tport)
        return Path(
            label,
            "dnat",
            out.rule.text if out.rule else "",
            target=target,
            target_port=tport,
            owner_tag=tag,
            inner=inner,
            trace=out.trace,
        )
    ln = best_listener(snap.listeners, pkt.proto, pkt.daddr, pkt.dport)
    if ln is None:
        return Path(
            label,
            "nothing",
            "no NAT rule and no socket: connections are refused"
            if pkt.proto == "tcp"
            else "no NAT rule and no socket",
        )
    holder = snap.classify(ln.processes[0] if ln.processes else None, ln)
    path = Path(label, "socket", ln.binding, holder=holder)
    if holder.proxy_to:
        to_ip, to_port = _twin(snap, holder, ln, pkt) or holder.proxy_to
        target = snap.resolve(to_ip)
        return Path(
            label,
            "socket",
            ln.binding,
            holder=holder,
            target=target,
            target_port=to_port,
            inner=inner_of(snap, target, pkt.proto, to_port),
        )
    if holder.sandbox or holder.container:
        name = holder.sandbox or holder.container
        kind = "sandbox" if holder.sandbox else "container"
        return Path(
            label,
            "socket",
            ln.binding,
            holder=holder,
            target=Endpoint(ln.ip, kind, name, "host"),
            target_port=ln.port,
        )
    return path


def _twin(snap: Snapshot, holder: Holder, ln: Listener, pkt: Packet) -> tuple[IPAddress, int] | None:
    """Where a proxy-mode sandbox's dual-stack ``[::]:P`` socket sends an IPv4 client: to the
    IPv4 half's backend, its twin (publish/proxy.py), not to the IPv6 target the socket records."""
    if (
        holder.proxy_to is None
        or pkt.daddr.version != 4
        or holder.proxy_to[0].version != 6
        or not holder.sandbox
    ):
        return None
    rec = next((r for r in snap.sandboxes if r.name == holder.sandbox), None)
    if rec is None or rec.sandbox.publish_mode != "proxy":
        return None
    for m in rec.sandbox.mappings:
        if (m.proto, m.host_port, m.container_port) == (ln.proto, ln.port, holder.proxy_to[1]):
            if m.container_ip.version == 4:
                return m.container_ip, m.container_port
    return None


def local_rewrite(snap: Snapshot, label: str, pkt: Packet) -> Path | None:
    """A client on this host dialling an ebpf publication: its socket is connected straight to
    the sandbox by the cgroup connect program (issue 11), before any NAT rule could see it."""
    if pkt.hook != "output":
        return None
    e = snap.bpf.rewrite_for(pkt.proto, pkt.daddr, pkt.dport)
    if e is None:
        return None
    target = snap.resolve(e.ip)
    detail = f"rewritten at connect() to {fmt_ep(e.ip, e.port)} by portwright"
    if pkt.proto == "udp" and pkt.daddr.version == 6 and e.ip.version == 4:
        detail += " (connected sockets; unconnected datagrams take the ::1 relay)"
    inner = inner_of(snap, target, pkt.proto, e.port)
    return Path(label, "rewrite", detail, target=target, target_port=e.port, inner=inner)


def differences(paths: list[Path], proto: str, port: int) -> list[str]:
    out: list[str] = []
    by = {p.label: p for p in paths}
    l4, l6 = by.get("127.0.0.1"), by.get("[::1]")
    if l4 and l6 and l4.end != l6.end:
        out.append(
            f"127.0.0.1:{port}/{proto} reaches {_end_text(l4)} but [::1]:{port}/{proto} reaches "
            f"{_end_text(l6)}"
        )
    remote = [p for p in paths if p.label.endswith("(other machines)")]
    if len(remote) == 2 and remote[0].end != remote[1].end:
        out.append(
            f"from other machines, IPv4 reaches {_end_text(remote[0])} but IPv6 reaches {_end_text(remote[1])}"
        )
    for p in paths:
        if p.via == "socket" and p.holder and p.holder.kind in PLACEHOLDERS and not p.holder.proxy_to:
            out.append(
                f"{p.label} lands on {p.holder.describe()}, which accepts nothing useful: "
                "that family is not published by NAT"
            )
    return out


def _end_text(p: Path) -> str:
    if p.target is not None and p.target.kind in ("sandbox", "container"):
        where = f", where nothing listens on {fmt_ep(p.target.ip, p.target_port)}" if p.nothing_inside else ""
        return f"{p.target.kind} {p.target.name}{where}"
    if p.via == "socket" and p.holder:
        return p.holder.describe()
    if p.via == "dnat" and p.target is not None:
        return f"DNAT to {fmt_ep(p.target.ip, p.target_port)}"
    return "nothing (refused)" if p.via == "nothing" else p.via


def who(snap: Snapshot, port: int, proto: str = "tcp") -> WhoReport:
    if not 1 <= port <= 65535:
        raise BadInput(f"port {port} is outside 1-65535; give a port like 8080 or 53/udp")
    rep = WhoReport(port, proto, notes=list(snap.notes))
    for ln in snap.listeners:
        if ln.proto == proto and ln.port == port:
            rep.holders.append((ln, snap.classify(ln.processes[0] if ln.processes else None, ln)))
    probes = _probes(snap, proto, port)
    rep.paths = [local_rewrite(snap, label, pkt) or follow(snap, label, pkt) for label, pkt in probes]
    rep.differences = differences(rep.paths, proto, port)
    rep.remapped = remapped(snap, port, proto)
    return rep


def remapped(snap: Snapshot, port: int, proto: str) -> list[str]:
    """host-remap sandboxes (issue 12) whose CMD binds this host port as another one: the
    sandbox, its CMD's pid and the port it asked for (its cgroup's bind program rewrote it)."""
    out = []
    for rec in snap.sandboxes:
        if rec.sandbox.publish_mode != "host-remap" or rec.status == "exited":
            continue
        for m in rec.sandbox.mappings:
            if m.proto == proto and m.host_port == port:
                pid = f"CMD pid {rec.cmd_pid}" if rec.cmd_pid else "CMD not running"
                out.append(
                    f"sandbox {rec.name} ({pid}): bound as :{m.container_port}, remapped at bind() "
                    f"to {m.host_binding()}"
                )
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------- rendering
def render(rep: WhoReport) -> str:
    lines = [f"{rep.port}/{rep.proto}: {rep.summary()}"]
    if rep.holders:
        lines.append("├─ sockets")
        for i, (ln, h) in enumerate(rep.holders):
            br = "│  └─" if i == len(rep.holders) - 1 else "│  ├─"
            cmd = h.cmdline if len(h.cmdline) <= 70 else h.cmdline[:67] + "..."
            lines.append(f"{br} {ln.binding:<22} {h.describe()}" + (f"  [{cmd}]" if cmd else ""))
    else:
        lines.append("├─ sockets: none on the host")
    for r in rep.remapped:
        lines.append(f"├─ remapped: {r}")
    lines.append("├─ paths")
    for i, p in enumerate(rep.paths):
        last = i == len(rep.paths) - 1
        br, cont = ("│  └─", "│     ") if last else ("│  ├─", "│  │  ")
        lines.append(f"{br} {p.label:<32} {_path_text(p)}")
        if p.inner is not None and (p.inner.listeners or p.inner.note):
            for ln, h in p.inner.listeners:
                lines.append(f"{cont}   inside: {ln.binding} {h.describe()}")
            if p.inner.note:
                lines.append(f"{cont}   inside: {p.inner.note}")
    if rep.differences:
        lines.append("├─ differences")
        for d in rep.differences:
            lines.append(f"│  ! {d}")
    for n in rep.notes:
        lines.append(f"│  note: {n}")
    lines[-1] = lines[-1].replace("├─", "└─", 1) if lines[-1].startswith("├─") else lines[-1]
    return "\n".join(lines)


def _path_text(p: Path) -> str:
    if p.via == "dnat" and p.target is not None:
        name = f"{p.target.kind} {p.target.name}" if p.target.name else f"{p.target.kind} address"
        net = f", network {p.target.network}" if p.target.network else ""
        tag = f" [{p.owner_tag}]" if p.owner_tag else ""
        return f"DNAT -> {fmt_ep(p.target.ip, p.target_port)} ({name}{net}){tag} by: {p.detail}"
    if p.via == "rewrite" and p.target is not None:
        name = f"{p.target.kind} {p.target.name}" if p.target.name else f"{p.target.kind} address"
        net = f", network {p.target.network}" if p.target.network else ""
        return f"{p.detail} ({name}{net})"
    if p.via == "socket" and p.holder is not None:
        return f"socket {p.detail}: {p.holder.describe()}"
    if p.via == "dropped":
        return f"dropped by: {p.detail}"
    return p.detail
