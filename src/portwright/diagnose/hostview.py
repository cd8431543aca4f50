"""What the whole filter ruleset does to one new connection: accepted, or dropped and by what.

nftables runs every base chain of a hook, in priority order, in every table: an ``accept`` ends
only the chain it is in, while a ``drop``/``reject`` anywhere (or a base chain's policy drop) is
final. So "is published port P reachable" needs every table: ``inet portwright``'s forward chain,
iptables-nft's ``ip filter FORWARD`` with ufw's chains, firewalld's ``inet firewalld``, a hardened
``inet filter`` from /etc/nftables.conf. ``verdict`` walks the filter chains of the ``forward`` or
``input`` hook for a packet opening a connection (conntrack state ``new``) and names what decided.

Source addresses are unknown to an audit ("any machine"): a rule matching on ``saddr`` is taken as
matching when it accepts (the verdict then says "only from" those networks) and as not matching
when it drops (some other source still gets through). Matches it cannot evaluate (most ``xt``
matches) are assumed to match, as in ``nftview.walk``, and listed. Pure over a parsed Ruleset.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..model import IPAddress
from .nftview import Chain, Cond, IPNet, Rule, Ruleset, _ifmatch

MAX_DEPTH = 32  # jumps followed before giving up (a loop in someone's ruleset)


@dataclass(frozen=True, slots=True)
class FilterPacket:
    """A packet that opens a connection: ``hook`` is ``input`` (to a host socket) or ``forward``."""

    hook: str
    proto: str
    daddr: IPAddress
    dport: int
    iif: str = ""
    oif: str = ""  # forward: the bridge it leaves by
    dnat: bool = False  # conntrack status dnat (the packet was DNATed in prerouting)


@dataclass(frozen=True, slots=True)
class Verdict:
    """``accept`` or ``drop``; ``rule`` decided it (None: a chain's policy, named in ``policy_of``)."""

    kind: str
    rule: Rule | None = None
    policy_of: Chain | None = None
    only_from: tuple[IPNet, ...] = ()  # accepted only from these sources (an accept on saddr)
    assumed: tuple[str, ...] = ()

    @property
    def ufw(self) -> bool:
        return self.rule is not None and self.rule.chain.startswith("ufw")

    def reason(self) -> str:
        """One phrase: "filter FORWARD policy DROP", "ufw's deny (ip filter ufw-user-input: ...)"."""
        if self.policy_of is not None:
            c = self.policy_of
            return f"{c.table} {c.name} policy {str(c.policy).upper()} ({c.family} table {c.table})"
        if self.rule is None:
            return "no rule (every chain accepts)"
        where = (
            f"{self.rule.family} {self.rule.table} {self.rule.chain}: {self.rule.text or self.rule.verdict}"
        )
        if self.ufw:
            return f"ufw's {'deny' if self.kind == 'drop' else 'allow'} ({where})"
        return where


@dataclass
class _W:
    rs: Ruleset
    p: FilterPacket
    only_from: list[IPNet] = field(default_factory=list)
    assumed: list[str] = field(default_factory=list)


def _in_set(rs: Ruleset, r: Rule, ref: str, name: str) -> bool | None:
    members = rs.sets.get((r.family, r.table, ref[1:]))
    return None if members is None else name in members


def _flat(values: tuple[object, ...]) -> list[str]:
    """Condition values as strings: nft -j writes ``ct state established,related`` as a list."""
    out: list[str] = []
    for v in values:
        out.extend(str(x) for x in v) if isinstance(v, list) else out.append(str(v))
    return out


def _cond(w: _W, r: Rule, c: Cond) -> bool | None:
    """Does one condition hold? None: undecidable here."""
    p = w.p
    if c.key in ("iifname", "oifname"):
        name = p.iif if c.key == "iifname" else p.oif
        if not name:
            return None  # not known (a container's bridge that is not ours): assumed, and listed
        hits = [_in_set(w.rs, r, v, name) if v.startswith("@") else _ifmatch(v, name) for v in c.values]
        if None in hits:
            return None
        return any(hits) != c.neg
    if c.key == "daddr":
        fam = [n for n in c.values if n.version == p.daddr.version]
        if not fam:
            return False
        return any(p.daddr in n for n in fam) != c.neg
    if c.key == "l4proto":
        return (p.proto in c.values) != c.neg
    if c.key == "dport":
        return any(lo <= p.dport <= hi for lo, hi in c.values) != c.neg
    if c.key == "sport":
        return None
    if c.key == "ctstate":
        return ("new" in _flat(c.values)) != c.neg
    if c.key == "ctstatus":
        return (p.dnat and "dnat" in _flat(c.values)) != c.neg
    if c.key == "nfproto":
        return (("ipv4" if p.daddr.version == 4 else "ipv6") in c.values) != c.neg
    return None


def _matches(w: _W, r: Rule) -> bool:
    decisive = r.verdict in ("accept", "drop", "reject")
    for c in r.conds:
        if c.key == "saddr":
            if not decisive or r.verdict != "accept" or c.neg:
                if decisive:
                    return False  # a drop aimed at some sources: the others still pass
                w.assumed.append(f"{r.chain}: {c.describe()}")
                continue
            w.only_from.extend(
                n for n in c.values if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network)
            )
            continue
        t = _cond(w, r, c)
        if t is None:
            w.assumed.append(f"{r.chain}: {c.describe()}")
        elif not t:
            return False
    return True


def _chain(w: _W, ch: Chain, depth: int) -> Verdict | None:
    """accept/drop when a rule decides; None when the chain falls through or returns."""
    if depth > MAX_DEPTH:
        return None
    for r in ch.rules:
        mark = len(w.only_from)
        if not _matches(w, r):
            del w.only_from[mark:]
            continue
        if r.verdict in ("jump", "goto") and r.target:
            sub = w.rs.chain(r.family, r.table, r.target)
            out = _chain(w, sub, depth + 1) if sub is not None else None
            if out is not None or r.verdict == "goto":
                return out
        elif r.verdict == "return":
            return None
        elif r.verdict == "accept":
            return Verdict("accept", r, only_from=tuple(w.only_from), assumed=tuple(w.assumed))
        elif r.verdict in ("drop", "reject"):
            return Verdict("drop", r, assumed=tuple(w.assumed))
        del w.only_from[mark:]
    return None


def verdict(rs: Ruleset, p: FilterPacket) -> Verdict:
    """Every filter base chain of ``p.hook`` for ``p``'s family, in priority order: the first drop
    (rule or policy) wins; otherwise the packet is accepted (by the last deciding accept)."""
    last = Verdict("accept")
    only: list[IPNet] = []
    for ch in rs.base_chains(p.hook, p.daddr.version, "filter"):
        w = _W(rs, p)
        out = _chain(w, ch, 0)
        if out is None:
            if ch.policy == "drop":
                return Verdict("drop", policy_of=ch, assumed=tuple(w.assumed))
            continue
        if out.kind == "drop":
            return out
        only += out.only_from
        last = Verdict("accept", out.rule, only_from=tuple(only), assumed=out.assumed)
    return last


def input_drop_lines(rs: Ruleset, bindings: list[tuple[str, IPAddress, int]]) -> list[str]:
    """One line per (proto, host address, port) the input hook would drop for a new connection from
    another machine: what ``run --firewall host`` prints at publish time. Loopback bindings are
    skipped (only the host reaches them); a wildcard address stands for any host address."""
    out = []
    for proto, addr, port in bindings:
        if addr.is_loopback:
            continue
        v = verdict(rs, FilterPacket("input", proto, addr, port, iif="*"))
        if v.kind == "drop":
            shown = f"[{addr}]" if addr.version == 6 else str(addr)
            out.append(
                f"--firewall host: {proto} {shown}:{port} is dropped by the host firewall ({v.reason()}); "
                "other machines cannot reach it until the firewall admits it (e.g. ufw allow "
                f"{port}/{proto})"
            )
    return out
