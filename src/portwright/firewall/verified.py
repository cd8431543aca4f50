"""What the table was last seen to hold, and at which ruleset generation: restore's shortcut.

Every command puts back what a firewall reload took (``Firewall.ensure_all``), and that used to
read the whole table each time: at 10,000 published ports, 20,000 elements, about a second of nft
and JSON per command (#11). The kernel numbers every committed nftables transaction of a network
namespace (the ruleset generation, ``kernel.nftevents.generation``), so "nothing was committed
since I last looked" is one cheap question. A ``Verified`` is a set of facts about the table
(the base is there, these networks' rules are there, these owners' NAT elements are there) that
held at one (namespace cookie, generation). The generation only grows, so the table at a given
one never changes: a record is true forever for its generation, and it is used only while the
namespace is still at exactly that generation. Nothing here can make a check pass that a read of
the table would fail; at worst a record is out of date and the full read runs.

Two ways to make a record (``ops.Firewall``):
- a read of the table found these things whole, and the generation was the same before and after
  the read;
- a record current at generation G, and our own transaction of k commits under the table lock,
  after which the generation is exactly G + k: then only our commits happened in between, and
  the facts become what that transaction makes them (``with_publication``, ``without_owner``,
  ``with_network``, ...). Anyone else's commit (a reload, Docker's iptables-nft, another state
  directory's portwright) makes the next check read the table again.

Pure: no I/O (``memofile`` reads and writes the record).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..model import Mapping, Network, address_text

Where = tuple[int, int]  # (network namespace cookie, ruleset generation)
GEN_MODULUS = 1 << 32  # NFTA_GEN_ID is a u32


@dataclass(frozen=True, slots=True)
class Verified:
    """Facts about table inet portwright that held at ``where``."""

    where: Where
    base: bool = False  # the table, its chains, sets, maps and fixed rules
    nets: dict[str, str] = field(default_factory=dict)  # net_digest -> network name
    pubs: dict[str, str] = field(default_factory=dict)  # owner -> pub_digest
    # The host firewall's forward path (DOCKER-USER, ufw's FORWARD, firewalld's zone) accepted
    # exactly these bridges, and nothing was left to change (None: not known). Our own
    # transactions never touch those tables, so they carry it forward unchanged.
    host: tuple[str, ...] | None = None

    def at(self, where: Where) -> Verified:
        return replace(self, where=where)


def net_digest(net: Network) -> str:
    """Everything ``rules.network_commands`` derives a network's rules from."""
    text = repr(
        (
            net.name,
            net.bridge,
            str(net.subnet4),
            str(net.gateway4),
            str(net.subnet6),
            str(net.gateway6),
            net.internal,
        )
    )
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


#: The last digests, by the identity of the tuple they were computed from: ``state`` hands out the
#: same tuple of a sandbox's mappings until its rows change, and one command asks for the digest
#: of 20,000 mappings several times (restore, teardown). The tuple is kept, so its id stays its own.
_DIGESTS: dict[int, tuple[tuple[Mapping, ...], str]] = {}
_DIGESTS_MAX = 64


def pub_digest(mappings: Iterable[Mapping]) -> str:
    """The NAT elements ``mappings`` stand for (their NAT-capable ones, in any order)."""
    if isinstance(mappings, tuple):
        hit = _DIGESTS.get(id(mappings))
        if hit is not None and hit[0] is mappings:
            return hit[1]
        digest = _digest(mappings)
        if len(_DIGESTS) >= _DIGESTS_MAX:
            _DIGESTS.clear()
        _DIGESTS[id(mappings)] = (mappings, digest)
        return digest
    return _digest(mappings)


def _digest(mappings: Iterable[Mapping]) -> str:
    return row_digest(
        (m.proto, address_text(m.host_ip), m.host_port, address_text(m.container_ip), m.container_port)
        for m in mappings
    )


Row = tuple[str, str, int, str, int]  # (proto, host address, host port, sandbox address, port)


def row_nat_capable(row: Row) -> bool:
    """``rules.nat_capable`` of a stored row (``state``'s canonical address text): both ends of
    one family, and not the IPv6 loopback."""
    _, host, _, target, _ = row
    v6 = ":" in host
    return v6 == (":" in target) and not (v6 and host == "::1")


def row_digest(rows: Iterable[Row]) -> str:
    """``pub_digest`` of mappings given as stored rows: a command can tell that a sandbox's
    publication is vouched for without decoding its 20,000 rows into mappings (#11)."""
    keys = sorted(f"{p} {h} {hp} {c} {cp}" for p, h, hp, c, cp in rows if row_nat_capable((p, h, hp, c, cp)))
    return hashlib.blake2b("\n".join(keys).encode(), digest_size=16).hexdigest()


def advanced(before: Where, commits: int, after: Where | None) -> bool:
    """Were our ``commits`` the only ones between ``before`` and ``after``? (The kernel skips 0
    when the u32 wraps; a wrap then reads as "someone else committed", which only costs a read.)"""
    return after is not None and after[0] == before[0] and after[1] == (before[1] + commits) % GEN_MODULUS


def _current(v: Verified | None, where: Where | None) -> bool:
    return v is not None and where is not None and v.where == where and v.base


def vouches(v: Verified | None, where: Where | None, nets: Sequence[Network], pubs: dict[str, str]) -> bool:
    """Does ``v`` vouch, at ``where`` (now), for the base, every network and each owner's
    publication, given by its digest (``pub_digest`` or ``row_digest``)?"""
    if v is None or not _current(v, where):
        return False
    return all(net_digest(n) in v.nets for n in nets) and all(v.pubs.get(o) == d for o, d in pubs.items())


def covers(
    v: Verified | None,
    where: Where | None,
    nets: Sequence[Network],
    pubs: Sequence[tuple[str, Sequence[Mapping]]],
) -> bool:
    """``vouches``, with each publication given by its mappings (digested only when the record
    is current: 20,000 mappings are worth digesting only then)."""
    return _current(v, where) and vouches(v, where, nets, {owner: pub_digest(ms) for owner, ms in pubs})


def whole(where: Where, nets: Sequence[Network], pubs: Sequence[tuple[str, Sequence[Mapping]]]) -> Verified:
    """The record of a read that found the base, ``nets`` and ``pubs`` all in place."""
    return Verified(
        where,
        base=True,
        nets={net_digest(n): n.name for n in nets},
        pubs={owner: pub_digest(ms) for owner, ms in pubs},
    )


def with_publication(v: Verified, owner: str, mappings: Sequence[Mapping], base_added: bool) -> Verified:
    """After ``owner``'s NAT elements for ``mappings`` were added (and the base, if it was)."""
    return replace(v, base=v.base or base_added, pubs={**v.pubs, owner: pub_digest(mappings)})


def without_owner(v: Verified, owner: str) -> Verified:
    """After ``owner``'s elements and rules were deleted."""
    return replace(v, pubs={o: d for o, d in v.pubs.items() if o != owner})


def with_network(v: Verified, net: Network, base_added: bool) -> Verified:
    """After network ``net``'s rules replaced any of the same name (``Firewall.add_network``)."""
    nets = {d: n for d, n in v.nets.items() if n != net.name}
    nets[net_digest(net)] = net.name
    return replace(v, base=v.base or base_added, nets=nets)


def without_network(v: Verified, name: str) -> Verified:
    return replace(v, nets={d: n for d, n in v.nets.items() if n != name})


def to_json(v: Verified) -> dict[str, Any]:
    out = {"cookie": v.where[0], "gen": v.where[1], "base": v.base, "nets": v.nets, "pubs": v.pubs}
    return out if v.host is None else {**out, "host": list(v.host)}


def from_json(data: Any) -> Verified | None:
    """A record read back; None for anything malformed (then the table is read again)."""
    try:
        where = (int(data["cookie"]), int(data["gen"]))
        nets, pubs = data["nets"], data["pubs"]
        if not isinstance(data["base"], bool) or not isinstance(nets, dict) or not isinstance(pubs, dict):
            return None
        host = data.get("host")
        if host is not None and not isinstance(host, list):
            return None
        return Verified(
            where,
            base=data["base"],
            nets={str(k): str(n) for k, n in nets.items()},
            pubs={str(o): str(d) for o, d in pubs.items()},
            host=None if host is None else tuple(str(b) for b in host),
        )
    except (KeyError, TypeError, ValueError):
        return None
