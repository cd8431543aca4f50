"""What is missing from the live table: the pure half of "put back what is ours".

A firewall reload (Debian's ``nftables.service`` starts with ``flush ruleset``), someone's
``nft delete table inet portwright`` or a stray ``nft delete element`` can take any part of what
portwright installed. Each function here compares a listed table (``nft -j list table``) with what
``rules`` would install and names what is absent, one short phrase per missing piece, so the
caller can re-apply only when something is gone (``ops.Firewall.ensure_*``) and ``audit`` can say
what it found. No I/O.

Rules are compared by count per chain and tag: nft lists a rule in its own normalised form, so
comparing expressions with the generated JSON would see differences where there are none, while a
deleted rule (or a flushed chain) always lowers the count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..model import Mapping, Network
from . import rules

Table = dict[str, Any]


def _names(table: Table, kind: str) -> set[str]:
    return {str(o.get("name")) for o in rules._objects(table, kind)}


def _rule_counts(table: Table) -> Counter[tuple[str, str]]:
    """(chain, comment) -> how many such rules the table holds."""
    return Counter((str(r.get("chain")), str(r.get("comment") or "")) for r in rules._objects(table, "rule"))


def _wanted_rule_counts(cmds: Sequence[rules.Cmd]) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for cmd in cmds:
        body = cmd.get("add", {}).get("rule")
        if isinstance(body, dict):
            out[(str(body["chain"]), str(body.get("comment") or ""))] += 1
    return out


def _short(counts: Counter[tuple[str, str]], have: Counter[tuple[str, str]]) -> list[str]:
    return [
        f"{want - have[key]} rule(s) of chain {key[0]}"
        for key, want in sorted(counts.items())
        if have[key] < want
    ]


def _has_table(table: Table) -> bool:
    for item in table.get("nftables", []) if table else ():
        t = item.get("table") if isinstance(item, dict) else None
        if isinstance(t, dict) and t.get("name") == rules.TABLE and t.get("family") == rules.FAMILY:
            return True
    return False


def missing_base(table: Table) -> list[str]:
    """The table, chains, sets, maps and fixed rules that ``rules.base_commands`` would add."""
    if not _has_table(table):
        return [f"table {rules.FAMILY} {rules.TABLE}"]
    base = rules.base_commands()
    out: list[str] = []
    for kind in ("chain", "set", "map"):
        have = _names(table, kind)
        for cmd in base:
            body = cmd.get("add", {}).get(kind)
            if isinstance(body, dict) and body["name"] not in have:
                out.append(f"{kind} {body['name']}")
    return out + _short(_wanted_rule_counts(base), _rule_counts(table))


def missing_network(net: Network, table: Table) -> list[str]:
    """The bridge element and the tagged rules of network ``net`` absent from ``table``."""
    tag = rules.net_tag(net.name)
    out: list[str] = []
    if not any(k == net.bridge and c == tag for k, _, c in rules._set_elements(table, rules.SET_BRIDGES)):
        out.append(f"bridge {net.bridge} in set {rules.SET_BRIDGES}")
    # Only this network's own rules count: another state directory's network of the same name
    # carries the same tag (``rules.network_rules``).
    mine = {"nftables": [{"rule": r} for r in rules.network_rules(net, table)]}
    return out + _short(_wanted_rule_counts(rules.network_commands(net)), _rule_counts(mine))


def missing_publication(owner: str, mappings: Sequence[Mapping], table: Table) -> list[str]:
    """The NAT map elements of ``owner``'s mappings absent from ``table`` (tag, key and target)."""
    tag = rules.owner_tag(owner)
    have = {
        (p.proto, p.host_ip, p.host_port, p.container_ip, p.container_port)
        for p in rules.published(table)
        if p.owner == tag
    }
    return [
        f"nft element {m.host_binding()}/{m.proto}"
        for m in mappings
        if rules.nat_capable(m)
        and (m.proto, m.host_ip, m.host_port, m.container_ip, m.container_port) not in have
    ]
