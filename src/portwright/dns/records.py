"""The record table: which names answer with which addresses, per network. Pure, no I/O.

Built whole from the live sandboxes (``Entry``) each time something changes and swapped in at once,
so a query is always answered from one consistent table. Names compare case-insensitively (RFC
4343). Within a network a name answers as ``NAME`` and ``NAME.portwright``; several sandboxes may
share an alias (their addresses are all returned, rotated per query); a sandbox's own name is
unique (state enforces it) and an alias may not shadow another sandbox's name (``alias_clash``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..model import IPAddress

ZONE = "portwright"  # NAME.portwright: the host's view, and an explicit form inside sandboxes


@dataclass(frozen=True, slots=True)
class Entry:
    """One live sandbox on a bridge network: what it answers to, and its addresses there."""

    network: str
    name: str
    aliases: tuple[str, ...] = ()
    ip4: ipaddress.IPv4Address | None = None
    ip6: ipaddress.IPv6Address | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """Addresses for a name on one network (either tuple may be empty: NODATA for that type)."""

    v4: tuple[ipaddress.IPv4Address, ...] = ()
    v6: tuple[ipaddress.IPv6Address, ...] = ()


def _norm(name: str) -> str:
    """A query or record name as a table key: lower case, no trailing dot, no zone suffix."""
    n = name.lower().rstrip(".")
    return n.removesuffix("." + ZONE)


def reverse_name(ip: IPAddress) -> str:
    return ip.reverse_pointer.lower()


@dataclass(slots=True)
class Table:
    """Every network's names, reverse names and subnets. Build with ``Table.build``."""

    names: dict[tuple[str, str], Answer] = field(default_factory=dict)
    ptr: dict[tuple[str, str], str] = field(default_factory=dict)  # (network, reverse) -> name
    host_names: dict[str, Answer] = field(default_factory=dict)  # NAME.portwright on the host

    @classmethod
    def build(cls, entries: Iterable[Entry]) -> Table:
        v4: dict[tuple[str, str], list[ipaddress.IPv4Address]] = {}
        v6: dict[tuple[str, str], list[ipaddress.IPv6Address]] = {}
        t = cls()
        for e in sorted(entries, key=lambda e: (e.network, e.name)):
            for label in dict.fromkeys((e.name, *e.aliases)):
                key = (e.network, _norm(label))
                if e.ip4 is not None:
                    v4.setdefault(key, []).append(e.ip4)
                if e.ip6 is not None:
                    v6.setdefault(key, []).append(e.ip6)
                v4.setdefault(key, [])
                v6.setdefault(key, [])
            for ip in (e.ip4, e.ip6):
                if ip is not None:
                    t.ptr[(e.network, reverse_name(ip))] = f"{e.name}.{ZONE}."
            t.host_names[_norm(e.name)] = Answer((e.ip4,) if e.ip4 else (), (e.ip6,) if e.ip6 else ())
        for key in v4:
            t.names[key] = Answer(tuple(v4[key]), tuple(v6[key]))
        return t

    def lookup(self, network: str, qname: str) -> Answer | None:
        """The addresses ``qname`` has on ``network``, or None when the network has no such name."""
        return self.names.get((network, _norm(qname)))

    def reverse(self, network: str, qname: str) -> str | None:
        return self.ptr.get((network, qname.lower().rstrip(".")))

    def host_entries(self) -> list[tuple[str, IPAddress]]:
        """(NAME.portwright, address) pairs for the host's hosts file, sorted."""
        out: list[tuple[str, IPAddress]] = []
        for n, a in sorted(self.host_names.items()):
            out += [(f"{n}.{ZONE}", ip) for ip in a.v4]
            out += [(f"{n}.{ZONE}", ip) for ip in a.v6]
        return out


def in_zone(qname: str) -> bool:
    """Names under ``.portwright`` are ours alone: never forwarded upstream."""
    n = qname.lower().rstrip(".")
    return n == ZONE or n.endswith("." + ZONE)


def alias_clash(name: str, aliases: Iterable[str], network: str, others: Iterable[Entry]) -> str | None:
    """Why this sandbox's names would shadow another sandbox's on ``network``, or None.

    An alias equal to another sandbox's name, or a name equal to another sandbox's alias, would make
    that name answer with the wrong sandbox; aliases shared between sandboxes are fine (round-robin).
    """
    mine = {_norm(a) for a in aliases}
    for o in others:
        if o.network != network:
            continue
        if _norm(o.name) in mine:
            return f"--network-alias {o.name!r} is the name of sandbox {o.name!r} on network {network!r}"
        if _norm(name) in {_norm(a) for a in o.aliases}:
            return f"name {name!r} is a --network-alias of sandbox {o.name!r} on network {network!r}"
    return None
