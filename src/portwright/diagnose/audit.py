"""``portwright audit``: what this host exposes by accident, each finding with evidence and a fix.

Checks (codes as printed): ``exposed`` (published on all interfaces), ``loopback-leak``
(127.0.0.1 publications that other machines can reach through DNAT; Docker #45610),
``input-bypass`` (DNATed ports go through FORWARD and skip the INPUT firewall; Docker #4737,
ufw), ``family-mismatch`` (v4-only publications, ``::1`` landing on a placeholder),
``blocked`` (published ports the whole ruleset's forward path drops: "blocked by filter FORWARD
policy DROP", never reported as exposed), ``placeholder`` (sockets that hold a port and serve nothing), ``undeclared`` (host-network
sandboxes or containers listening on ports they did not declare) and ``stale`` (rules, proxies
or sandboxes whose owner is gone) and ``degraded`` (a running sandbox's NAT publication that the
kernel no longer holds, after a firewall reload). Pure over a Snapshot; the CLI exits non-zero on ``high``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..model import IPAddress
from .bpfview import bpf_findings
from .hostview import FilterPacket, Verdict, verdict
from .nftview import Packet, input_filter, walk
from .ports import PortRow, port_rows
from .privileges import privilege_findings
from .remap import remap_findings
from .snapshot import APPLICATION, PLACEHOLDERS, Snapshot, fmt_ep
from .who import LOOP4, LOOP6, Path, follow

SEVERITIES = ("info", "low", "medium", "high")
# Services that are almost never meant to face the network: publishing them on every interface
# is the classic accident (databases, caches, search, the Docker API itself).
SENSITIVE_PORTS = {
    2375: "Docker API",
    2376: "Docker API (TLS)",
    2379: "etcd",
    3306: "MySQL",
    5432: "PostgreSQL",
    5984: "CouchDB",
    6379: "Redis",
    9200: "Elasticsearch",
    11211: "memcached",
    27017: "MongoDB",
    5672: "RabbitMQ",
    9092: "Kafka",
    8500: "Consul",
    1433: "SQL Server",
    9000: "PHP-FPM / MinIO",
}
LEAK_FIX_NFT = (
    "drop 127.0.0.0/8 arriving on other interfaces before DNAT: "
    "iptables -t raw -I PREROUTING -d 127.0.0.0/8 ! -i lo -j DROP"
)


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str
    code: str
    subject: str  # the binding or object it is about, e.g. "tcp 0.0.0.0:6379"
    message: str
    fix: str
    evidence: tuple[str, ...] = ()
    owner: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "code": self.code,
            "subject": self.subject,
            "owner": self.owner,
            "message": self.message,
            "fix": self.fix,
            "evidence": list(self.evidence),
        }


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def worst(self) -> str | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=SEVERITIES.index)

    def at_least(self, severity: str) -> list[Finding]:
        floor = SEVERITIES.index(severity)
        return [f for f in self.findings if SEVERITIES.index(f.severity) >= floor]

    def to_json(self) -> dict[str, Any]:
        return {
            "findings": [f.to_json() for f in self.findings],
            "notes": self.notes,
            "counts": {s: sum(1 for f in self.findings if f.severity == s) for s in SEVERITIES},
        }


def _published(rows: list[PortRow]) -> list[PortRow]:
    """Rows that publish a port for a sandbox or container (not plain host listeners)."""
    return [
        r
        for r in rows
        if r.owner_kind in ("sandbox", "container", "cni")
        and r.mechanism in ("nat", "proxy", "docker-proxy")
        and not r.degraded  # not served at all: check_degraded reports it
    ]


def _who(r: PortRow) -> str:
    return f"{r.owner_kind} {r.owner}" if r.owner_kind in ("sandbox", "container", "cni") else r.owner


def _cport(r: PortRow) -> str:
    return str(r.target_port) if r.target_port else str(r.port)


def check_exposed(rows: list[PortRow], allow: set[int]) -> list[Finding]:
    out: list[Finding] = []
    seen: set[tuple[str, int, str]] = set()
    for r in _published(rows):
        if not r.wildcard or (r.mechanism == "nat" and not r.external) or r.stale:
            continue
        key = (r.proto, r.port, r.owner)
        if key in seen or r.port in allow:
            continue
        seen.add(key)
        svc = SENSITIVE_PORTS.get(r.port) or SENSITIVE_PORTS.get(r.target_port or 0)
        sev = "high" if svc else "medium"
        what = f" ({svc})" if svc else ""
        out.append(
            Finding(
                sev,
                "exposed",
                f"{r.proto} {r.binding}",
                f"{_who(r)} publishes {r.proto} port {r.port}{what} on all interfaces: every machine that "
                "can reach this host can connect",
                f"bind to 127.0.0.1 (-p 127.0.0.1:{r.port}:{_cport(r)}), or pass --allow-public {r.port} "
                "if it is meant to be public",
                (f"{r.mechanism} {r.binding} -> {r.target or '?'}",),
                _who(r),
            )
        )
    return out


def check_loopback_leak(snap: Snapshot, rows: list[PortRow]) -> list[Finding]:
    out: list[Finding] = []
    seen: set[tuple[str, int]] = set()
    localnet = sorted(k for k, v in snap.route_localnet.items() if v)
    for r in rows:
        if (
            r.degraded
            or r.mechanism != "nat"
            or not r.loopback
            or r.host_ip is None
            or r.host_ip.version != 4
        ):
            continue
        if (r.proto, r.port) in seen:
            continue
        seen.add((r.proto, r.port))
        pkt = Packet("prerouting", r.proto, r.host_ip, r.port, iif=snap.host_if)
        o = walk(snap.ruleset, pkt)
        if o.kind != "dnat":
            continue
        ev = [
            f"a packet for {fmt_ep(r.host_ip, r.port)} arriving on {snap.host_if} is DNATed to "
            f"{fmt_ep(o.to_addr, o.to_port)}:",
            *o.trace,
            "route_localnet=1 on: " + (", ".join(localnet) if localnet else "(none)"),
            "no rule drops 127.0.0.0/8 from other interfaces before DNAT",
        ]
        out.append(
            Finding(
                "high",
                "loopback-leak",
                f"{r.proto} {r.binding}",
                f"{_who(r)} is published on {r.host_ip} only, but other machines that route 127.0.0.0/8 "
                "to this host reach it too (Docker #45610)",
                LEAK_FIX_NFT,
                tuple(ev),
                _who(r),
            )
        )
    return out


def _bridge_of(snap: Snapshot, ip: IPAddress | None) -> str:
    for n in snap.networks:
        for net in (n.subnet4, n.subnet6):
            if ip is not None and net is not None and ip.version == net.version and ip in net:
                return n.bridge
    return ""


def forward_verdict(snap: Snapshot, r: PortRow) -> Verdict | None:
    """What the whole ruleset's forward hook does to a new connection DNATed to r's target."""
    if r.mechanism != "nat" or r.target_ip is None or not r.external or r.loopback or r.stale:
        return None
    pkt = FilterPacket(
        "forward",
        r.proto,
        r.target_ip,
        r.target_port or r.port,
        snap.host_if,
        _bridge_of(snap, r.target_ip),
        True,
    )
    return verdict(snap.ruleset, pkt)


def input_verdict(snap: Snapshot, r: PortRow) -> Verdict | None:
    """What the input hook would do to the same port as a host service (the host firewall's say).
    A wildcard binding is asked for the host's address of each family it serves (a ``[::]``
    socket is dual-stack): dropped only when every family drops it."""
    if r.host_ip is not None and not r.wildcard:
        addrs: list[IPAddress] = [r.host_ip]
    else:
        v6 = r.host_ip is None or r.host_ip.version == 6
        addrs = [a for a in (snap.host4, snap.host6 if v6 else None) if a is not None]
    out = [verdict(snap.ruleset, FilterPacket("input", r.proto, a, r.port, snap.host_if)) for a in addrs]
    return next((v for v in out if v.kind == "accept"), out[0] if out else None)


def check_blocked(snap: Snapshot, rows: list[PortRow]) -> list[Finding]:
    """Published ports that the forward path drops: not an exposure, but not reachable either."""
    out: list[Finding] = []
    seen: set[tuple[str, int]] = set()
    for r in _published(rows):
        v = forward_verdict(snap, r)
        if v is None or v.kind != "drop" or (r.proto, r.port) in seen:
            continue
        seen.add((r.proto, r.port))
        out.append(
            Finding(
                "low",
                "blocked",
                f"{r.proto} {r.binding}",
                f"{_who(r)}'s port {r.port} is blocked by {v.reason()}: other machines cannot reach it",
                "let portwright add its FORWARD accept (it does on the next run or network change), or "
                "accept the bridge in that chain; see 'Host firewalls' in the README",
                (f"forward {snap.host_if} -> {r.target}: {v.reason()}", *v.assumed[:3]),
                _who(r),
            )
        )
    return out


def _key(r: PortRow) -> tuple[str, int, str]:
    return (r.proto, r.port, r.owner)


def reachable_rows(snap: Snapshot, rows: list[PortRow]) -> list[PortRow]:
    """Rows other machines can actually reach: not DNATed into a forward drop (nor the relay
    socket beside such a DNAT), and, for a relay with no DNAT in front (proxy, --firewall host),
    not dropped by the INPUT filter as a host service would be."""
    blocked = {_key(r) for r in rows if (v := forward_verdict(snap, r)) is not None and v.kind == "drop"}
    natted = {_key(r) for r in rows if r.mechanism == "nat" and not r.loopback}
    out = []
    for r in rows:
        if _key(r) in blocked:
            continue
        if r.mechanism in ("proxy", "docker-proxy") and _key(r) not in natted and r.external:
            v = input_verdict(snap, r)
            if v is not None and v.kind == "drop":
                continue
        out.append(r)
    return out


def check_input_bypass(snap: Snapshot, rows: list[PortRow]) -> list[Finding]:
    policy_drop, drops = input_filter(snap.ruleset)
    if not policy_drop and not drops:
        return []
    out: list[Finding] = []
    seen: set[tuple[str, int]] = set()
    for r in _published(rows):
        if r.mechanism != "nat" or not r.external or r.loopback or r.stale or (r.proto, r.port) in seen:
            continue
        fwd, inp = forward_verdict(snap, r), input_verdict(snap, r)
        if fwd is not None and fwd.kind == "drop":
            continue  # blocked outright (check_blocked): nothing bypasses anything
        if inp is not None and inp.kind == "accept" and not inp.only_from:
            continue  # the host firewall admits this port as a host service too: no bypass
        seen.add((r.proto, r.port))
        said = (
            f"admitted despite {inp.reason()}"
            if inp is not None and inp.kind == "drop"
            else f"admitted from everywhere though INPUT admits it only from "
            f"{', '.join(map(str, inp.only_from))}"
            if inp is not None
            else "admitted"
        )
        ev = [
            f"INPUT for {r.proto} port {r.port} as a host service: {said}",
            "INPUT filter: " + ("policy drop" if policy_drop else f"{len(drops)} drop/reject rule(s)"),
            *(f"{d.where}: {d.text}" for d in drops[:3]),
            f"DNAT {r.binding} -> {r.target} ({', '.join(r.hooks)}): the packet is routed to FORWARD, "
            "never to INPUT",
        ]
        docker = r.owner_kind == "container"
        fix = (
            f"filter it in DOCKER-USER (iptables -I DOCKER-USER -p {r.proto} -m conntrack --ctorigdstport "
            f"{r.port} ! -s <allowed> -j DROP) or bind to 127.0.0.1"
            if docker
            else f"filter it in a forward-hook chain (ct original proto-dst {r.port}) or bind to 127.0.0.1"
        )
        out.append(
            Finding(
                "high" if policy_drop else "medium",
                "input-bypass",
                f"{r.proto} {r.binding}",
                f"{_who(r)}'s port {r.port} is DNATed before INPUT, so it is {said.split(' (')[0]}: the "
                "host firewall's INPUT rules do not apply to it (Docker #4737, ufw); --firewall host obeys them",
                fix,
                tuple(ev),
                _who(r),
            )
        )
    return out


def _served(p: Path) -> bool:
    """Does the path end at a sandbox or container?"""
    return p.target is not None and p.target.kind in ("sandbox", "container")


def _odd_one(p4: Path, p6: Path) -> tuple[Path, Path] | None:
    """(the family that works, the one that does not), or None when they agree: one ends at the
    sandbox and the other does not, or both reach it and nothing listens inside for one of them."""
    if _served(p4) != _served(p6):
        return (p4, p6) if _served(p4) else (p6, p4)
    if _served(p4) and p4.nothing_inside != p6.nothing_inside:
        return (p6, p4) if p4.nothing_inside else (p4, p6)
    return None


def _family_probes(snap: Snapshot, r: PortRow) -> list[tuple[Packet, str, Packet, str]]:
    """(IPv4 packet, label, IPv6 packet, label) pairs to compare: loopback clients, and clients
    on other machines when the host has an address of each family and the port is not loopback-only."""
    pairs = [
        (
            Packet("output", r.proto, LOOP4, r.port),
            "127.0.0.1",
            Packet("output", r.proto, LOOP6, r.port),
            "[::1]",
        )
    ]
    if snap.host4 and snap.host6 and not r.loopback:
        pairs.append(
            (
                Packet("prerouting", r.proto, snap.host4, r.port, snap.host_if),
                f"{snap.host4}",
                Packet("prerouting", r.proto, snap.host6, r.port, snap.host_if),
                f"[{snap.host6}]",
            )
        )
    return pairs


def _mismatch_text(r: PortRow, bad: Path) -> tuple[str, str, str]:
    """(severity, what happens to the other family, the fix) for a family that reaches nothing."""
    both = "publish both families (add -p [::]:P:C, or enable IPv6 NAT/ip6tables for Docker), or tell clients to use 127.0.0.1"
    if r.loopback and bad.via == "nothing":
        return (
            "low",
            "is refused (published on one family only)",
            (
                f"publish the other loopback too (-p [::1]:{r.port}:C beside -p 127.0.0.1:{r.port}:C), or tell clients which one"
            ),
        )
    if bad.nothing_inside and bad.inner is not None:
        return (
            "medium",
            f"reaches {bad.target.name if bad.target else '?'}, but {bad.inner.note}",
            (
                "make the server listen on both families inside (bind [::] with IPV6_V6ONLY off, or both "
                "addresses), or publish only the family it serves (-p 0.0.0.0:P:C)"
            ),
        )
    if bad.via == "socket" and bad.holder and bad.holder.kind in PLACEHOLDERS:
        return "medium", f"lands on {bad.holder.describe()}, which never answers", both
    if bad.via == "nothing":
        return "low", "is refused (published on one family only)", both
    return "medium", f"reaches {bad.holder.describe() if bad.holder else bad.via} instead", both


def check_families(snap: Snapshot, rows: list[PortRow]) -> list[Finding]:
    """Do IPv4 and IPv6 clients end in the same place, with something listening there? Loopback
    clients always; clients on other machines when the host has both families (issue 17: a
    v4-only server behind a dual-stack publication resets IPv6 clients inside the sandbox)."""
    out: list[Finding] = []
    seen: set[tuple[str, int]] = set()
    for r in _published(rows):
        if r.stale or (r.proto, r.port) in seen or r.port != r.port_end:
            continue
        seen.add((r.proto, r.port))
        for pkt4, label4, pkt6, label6 in _family_probes(snap, r):
            odd = _odd_one(follow(snap, label4, pkt4), follow(snap, label6, pkt6))
            if odd is None:
                continue
            good, bad = odd
            sev, what, fix = _mismatch_text(r, bad)
            out.append(
                Finding(
                    sev,
                    "family-mismatch",
                    f"{r.proto} {bad.label}:{r.port}",
                    f"{good.label}:{r.port} reaches {_who(r)} but {bad.label}:{r.port} {what}",
                    fix,
                    (f"{good.label}: {good.via} {good.detail}", f"{bad.label}: {bad.via} {bad.detail}"),
                    _who(r),
                )
            )
    return out


def check_placeholders(snap: Snapshot) -> list[Finding]:
    out: list[Finding] = []
    for ln in snap.listeners:
        h = snap.classify(ln.processes[0] if ln.processes else None, ln)
        if h.kind not in PLACEHOLDERS:
            continue
        probe_ip = ln.ip if not ln.ip.is_unspecified else (LOOP4 if ln.ip.version == 4 else LOOP6)
        p = follow(snap, fmt_ep(probe_ip, None), Packet("output", ln.proto, probe_ip, ln.port))
        if p.via == "dnat":
            out.append(
                Finding(
                    "info",
                    "placeholder",
                    f"{ln.proto} {ln.binding}",
                    f"{h.describe()} holds {ln.binding} so nothing else can bind it; NAT serves the traffic",
                    "none needed",
                    (f"{p.label}: DNAT {p.detail}",),
                    h.sandbox or "",
                )
            )
            continue
        out.append(
            Finding(
                "medium",
                "placeholder",
                f"{ln.proto} {ln.binding}",
                f"{h.describe()} holds {ln.binding} but no NAT rule serves {fmt_ep(probe_ip, ln.port)}: connections "
                "land on a socket that never answers",
                "publish that family through NAT too, or connect to the address that is published",
                (f"{ln.binding}: {h.describe()}", f"{p.label}: {p.via}"),
                h.sandbox or h.container or "",
            )
        )
    return out


def _undeclared_fix(sandbox: bool, port: int, proto: str, comm: str) -> str:
    """What works for a host-network listener: -p P:P is refused with --network host (and
    Docker discards -p there), so declare the port with --expose (EXPOSE for an image)."""
    declare = (
        f"--expose {port}/{proto}"
        if sandbox
        else f"EXPOSE {port}/{proto} in the image, or --expose {port}/{proto}"
    )
    return f"declare it ({declare}) or make {comm} bind to 127.0.0.1 or another port"


def check_undeclared(snap: Snapshot) -> list[Finding]:
    out: list[Finding] = []
    for ln in snap.listeners:
        h = snap.classify(ln.processes[0] if ln.processes else None, ln)
        if h.kind != APPLICATION or not (h.sandbox or h.container):
            continue
        declared: set[tuple[int, str]] = set()
        if h.sandbox:
            rec = next((r for r in snap.sandboxes if r.name == h.sandbox), None)
            if rec is not None:
                declared |= {(m.host_port, m.proto) for m in rec.sandbox.mappings}
                declared |= {(m.container_port, m.proto) for m in rec.sandbox.mappings}
                declared |= {(port, e.proto) for e in rec.spec.expose for port in e.ports}
            owner = f"sandbox {h.sandbox}"
        else:
            c = snap.docker.find(h.container or "")
            if c is not None:
                declared |= set(c.exposed) | {(p.container_port, p.proto) for p in c.published}
            owner = f"container {h.container}"
        if (ln.port, ln.proto) in declared:
            continue
        sev = "low" if ln.ip.is_loopback else "medium"
        out.append(
            Finding(
                sev,
                "undeclared",
                f"{ln.proto} {ln.binding}",
                f"{owner} uses the host network and listens on {ln.binding}/{ln.proto}, which it did not declare",
                _undeclared_fix(h.sandbox is not None, ln.port, ln.proto, h.comm),
                (f"pid {h.pid} {h.comm}: {h.cmdline[:100]}",),
                owner,
            )
        )
    return out


def check_stale(snap: Snapshot, rows: list[PortRow]) -> list[Finding]:
    out: list[Finding] = []
    seen: set[tuple[str, str, int]] = set()
    for r in rows:
        if not r.stale or (r.mechanism, r.proto, r.port) in seen:
            continue
        seen.add((r.mechanism, r.proto, r.port))
        if r.mechanism == "nat":
            fix = (
                f"remove the sandbox's leftovers: portwright rm -f {r.owner}"
                if r.owner_kind == "sandbox"
                else "delete the rule (nft -a list ruleset; nft delete rule ... handle N) or restart dockerd"
            )
            msg = f"a DNAT rule for {r.proto} {r.binding} outlives its owner: {r.why_stale}"
        else:
            fix = f"kill the leftover process (kill {r.pid})" if r.pid else "stop the leftover process"
            msg = f"{r.mechanism} on {r.proto} {r.binding} outlives its owner: {r.why_stale}"
        out.append(
            Finding(
                "high",
                "stale",
                f"{r.proto} {r.binding}",
                msg,
                fix,
                (f"{r.mechanism} {r.binding} -> {r.target or '?'}",),
                _who(r),
            )
        )
    for rec in snap.sandboxes:
        if rec.status in ("running", "creating") and not snap.alive(rec):
            out.append(
                Finding(
                    "high",
                    "stale",
                    f"sandbox {rec.name}",
                    f"sandbox {rec.name} is recorded as {rec.status} but its supervisor (pid {rec.supervisor_pid}) "
                    "is gone: its rules and sockets are left behind",
                    f"portwright rm -f {rec.name}",
                    (f"state: status={rec.status} supervisor_pid={rec.supervisor_pid}",),
                    f"sandbox {rec.name}",
                )
            )
    return out


def check_degraded(rows: list[PortRow]) -> list[Finding]:
    """NAT publications of running sandboxes that the kernel no longer serves (issue 13)."""
    return [
        Finding(
            "high",
            "degraded",
            f"{r.proto} {r.binding}",
            f"sandbox {r.owner} publishes {r.binding}/{r.proto} by kernel NAT, but {r.degraded}",
            "run 'portwright prune' to put the rules back (the fork server or supervisor does it "
            "within seconds while it runs), and find what flushed the ruleset (nftables.service reload?)",
            (f"expected: nat {r.binding} -> {r.target}", "found: no element tagged with the sandbox"),
            _who(r),
        )
        for r in rows
        if r.degraded
    ]


def audit(snap: Snapshot, allow_public: set[int] | None = None) -> AuditReport:
    rows = port_rows(snap)
    rep = AuditReport(notes=list(snap.notes))
    rep.findings += check_stale(snap, rows)
    rep.findings += check_degraded(rows)
    rep.findings += check_loopback_leak(snap, rows)
    rep.findings += check_blocked(snap, rows)
    rep.findings += check_exposed(reachable_rows(snap, rows), allow_public or set())
    rep.findings += check_input_bypass(snap, rows)
    rep.findings += check_families(snap, rows)
    rep.findings += check_placeholders(snap)
    rep.findings += check_undeclared(snap)
    rep.findings += [Finding(*f[:5], owner=f[5]) for f in bpf_findings(snap)]  # ebpf (issue 11)
    rep.findings += [Finding(*f[:5], owner=f[5]) for f in remap_findings(snap)]
    rep.findings += [Finding(*f[:5], owner=f[5]) for f in privilege_findings(snap)]
    rep.findings.sort(key=lambda f: (-SEVERITIES.index(f.severity), f.code, f.subject))
    return rep
