"""Anti-spoofing on the bridges (pure): frames from a sandbox's port carry only its MAC and addresses.

Without it, a sandbox with NET_ADMIN or NET_RAW can take a neighbour's address (``ip addr add``,
a gratuitous ARP, an unsolicited neighbour advertisement) and the host sends the neighbour's
traffic, published ports included, to it. Docker leaves this open on docker0; Calico and other
CNIs close it. portwright checks every frame that enters a bridge from a sandbox's host-side veth:

* the Ethernet source is the sandbox's MAC;
* ARP: sender MAC and sender IPv4 are the sandbox's;
* IPv4: the source is the sandbox's address;
* IPv6: the source is the sandbox's address, the link-local address derived from its MAC
  (EUI-64, what the kernel gives eth0), or ``::`` (duplicate address detection);
* neighbour advertisements: the target is one of those addresses (not ``::``);
* any other EtherType (VLAN tags, raw protocols) is dropped. DHCP is not used, so no exception.

Why a second table, ``bridge portwright_antispoof``: an ``inet`` table has no hook on the bridge
path (the ``bridge`` family's prerouting hook sees frames as they enter the bridge from a port,
before forwarding, without br_netfilter). DESIGN's one-table rule is kept in spirit: the table is
ours alone, named for what it does, and every element carries the owning sandbox's tag, so
teardown, reconcile and ``who`` treat it like the rest.

The shape scales and stays cheap: one rule ``iifname @ports jump antispoof`` and, in that chain,
one accept rule per EtherType whose single set lookup matches the interface, the frame's MAC and
its source address together (``allow4``, ``allow6``, ``allow_arp``); anything no accept rule takes
is dropped. A sandbox adds elements, never rules, so 1 port or 1,000 cost the same per frame: two
lookups for a frame from a sandbox port, one for a frame from elsewhere (the bridge itself, a
sandbox run with ``--allow-spoof``).

nft 1.0.6 has no ``icmpv6 taddr``: the NA target is the raw transport payload ``@th,64,128``,
so its set is declared ``typeof iifname . @th,64,128`` (``TYPEOF`` below, which ``nft.run``
creates from text as JSON cannot) and its elements are the address as a 128-bit hex number.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BadInput
from ..model import Sandbox
from ..owners import nft_comment, sandbox_owner

Cmd = dict[str, Any]

FAMILY = "bridge"
# Not "portwright": the first shape of these checks (one lookup per field, sets port_mac/port_ip4/
# port_ip6) lived in "bridge portwright" for a day on shared hosts; long-running processes of that
# version keep restoring it, so this shape has its own table and the two never rewrite each other.
TABLE = "portwright_antispoof"
CHAIN_HOOK = "prerouting"  # base chain on the bridge family's prerouting hook
CHAIN_CHECK = "antispoof"  # the checks, reached only from protected ports
# linux/netfilter_bridge.h: NF_BR_PRI_NAT_DST_BRIDGED = -300. Ours runs before any bridge-family
# DNAT or filter chain, so a forged frame is dropped before anyone acts on it.
PRIO = -310
SET_PORTS = "ports"  # ifname: every protected sandbox port
SET_ALLOW4 = "allow4"  # ifname . ether_addr . ipv4_addr: its MAC with its IPv4 source
SET_ALLOW6 = "allow6"  # ifname . ether_addr . ipv6_addr: its MAC with its address, link-local, ::
SET_ARP = "allow_arp"  # ifname . ether_addr . ether_addr . ipv4_addr: frame MAC, ARP sender MAC/IP
SET_ND = "port_nd"  # ifname . @th,64,128: neighbour advertisement targets
SETS = (SET_PORTS, SET_ALLOW4, SET_ALLOW6, SET_ARP, SET_ND)
TYPEOF = {SET_ND: "iifname . @th,64,128"}  # sets JSON cannot declare (nft.run creates them)
BASE_COMMENT = "pw-base: anti-spoofing"
ICMPV6_NA = "nd-neighbor-advert"
ND_TARGET = {"payload": {"base": "th", "offset": 64, "len": 128}}  # RFC 4861 4.4: after 8 bytes

_TYPES: dict[str, list[str] | str] = {
    SET_PORTS: "ifname",
    SET_ALLOW4: ["ifname", "ether_addr", "ipv4_addr"],
    SET_ALLOW6: ["ifname", "ether_addr", "ipv6_addr"],
    SET_ARP: ["ifname", "ether_addr", "ether_addr", "ipv4_addr"],
    SET_ND: ["ifname", "integer"],  # as nft lists a typeof set
}


@dataclass(frozen=True, slots=True)
class Port:
    """One sandbox's bridge port and what may come out of it."""

    owner: str  # the sandbox's owner tag source (owners.sandbox_owner)
    ifname: str  # the host-side veth
    mac: str
    ip4: ipaddress.IPv4Address | None
    ip6: ipaddress.IPv6Address | None

    def __post_init__(self) -> None:
        if not self.ifname or len(self.ifname) > 15:
            raise BadInput(f"anti-spoofing: interface name {self.ifname!r} is not a Linux ifname")
        try:
            octets = [int(x, 16) for x in self.mac.split(":")]
        except ValueError:
            octets = []
        if len(octets) != 6 or not all(0 <= o <= 255 for o in octets) or octets[0] & 1:
            raise BadInput(f"anti-spoofing: {self.mac!r} is not a unicast MAC address")


def port_for(sb: Sandbox) -> Port | None:
    """The bridge port of sandbox ``sb`` (None: it has none, ``--network host``/``none``)."""
    if sb.veth is None or sb.mac is None:
        return None
    ip6 = sb.ip6 if isinstance(sb.ip6, ipaddress.IPv6Address) else None
    ip4 = sb.ip4 if isinstance(sb.ip4, ipaddress.IPv4Address) else None
    return Port(owner=sandbox_owner(sb.id), ifname=sb.veth, mac=sb.mac, ip4=ip4, ip6=ip6)


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 link-local address the kernel derives from ``mac`` (RFC 4291 appendix A)."""
    b = [int(x, 16) for x in mac.split(":")]
    eui = [b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]]
    return ipaddress.IPv6Address(bytes([0xFE, 0x80, 0, 0, 0, 0, 0, 0, *eui]))


def _obj(kind: str, **fields: Any) -> dict[str, Any]:
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _concat(*parts: Any) -> dict[str, Any]:
    return {"concat": list(parts)}


_IIF = {"meta": {"key": "iifname"}}
_ETHERTYPE = {"payload": {"protocol": "ether", "field": "type"}}
_DROP: dict[str, Any] = {"drop": None}


def _check(expr: list[dict[str, Any]], why: str) -> Cmd:
    return {"add": _obj("rule", chain=CHAIN_CHECK, expr=[*expr, _DROP], comment=f"{BASE_COMMENT}: {why}")}


def _pl(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _accept(expr: list[dict[str, Any]], why: str) -> Cmd:
    body = [*expr, {"accept": None}]
    return {"add": _obj("rule", chain=CHAIN_CHECK, expr=body, comment=f"{BASE_COMMENT}: {why}")}


def _sets_commands() -> list[Cmd]:
    cmds: list[Cmd] = []
    for name in SETS:
        body: dict[str, Any] = {"name": name, "type": _TYPES[name]}
        if name in TYPEOF:
            body["typeof"] = TYPEOF[name]
        cmds.append({"add": _obj("set", **body)})
    return cmds


def base_commands() -> list[Cmd]:
    """The table, sets, chains and fixed rules, re-created from scratch (elements are kept by
    the caller: see ``Firewall.ensure_antispoof``). Flushing the chains first makes it idempotent.

    Each frame costs one lookup in ``ports`` and, from a sandbox port, one more: the accept rule
    of its EtherType matches the frame's MAC and source address together (a forged MAC or address
    misses). An ICMPv6 neighbour advertisement is checked for its target first. What no accept
    rule takes (a foreign MAC or address, another EtherType, a VLAN tag) is dropped."""
    cmds: list[Cmd] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    cmds += [
        {"add": _obj("chain", name=CHAIN_HOOK, type="filter", hook="prerouting", prio=PRIO, policy="accept")},
        {"add": _obj("chain", name=CHAIN_CHECK)},
        {"flush": _obj("chain", name=CHAIN_HOOK)},
        {"flush": _obj("chain", name=CHAIN_CHECK)},
    ]
    cmds[1:1] = _sets_commands()
    mac = _pl("ether", "saddr")
    cmds += [
        {
            "add": _obj(
                "rule",
                chain=CHAIN_HOOK,
                expr=[_match(_IIF, "@" + SET_PORTS), {"jump": {"target": CHAIN_CHECK}}],
                comment=f"{BASE_COMMENT}: frames from sandbox ports are checked",
            )
        },
        _accept(
            [_match(_ETHERTYPE, "ip"), _match(_concat(_IIF, mac, _pl("ip", "saddr")), "@" + SET_ALLOW4)],
            "IPv4 from its MAC and address",
        ),
        _check(
            [_match(_pl("icmpv6", "type"), ICMPV6_NA), _match(_concat(_IIF, ND_TARGET), "@" + SET_ND, "!=")],
            "neighbour advertisement target",
        ),
        _accept(
            [_match(_ETHERTYPE, "ip6"), _match(_concat(_IIF, mac, _pl("ip6", "saddr")), "@" + SET_ALLOW6)],
            "IPv6 from its MAC and address (link-local, ::)",
        ),
        _accept(
            [
                _match(_ETHERTYPE, "arp"),
                _match(_concat(_IIF, mac, _pl("arp", "saddr ether"), _pl("arp", "saddr ip")), "@" + SET_ARP),
            ],
            "ARP from its MAC, with its MAC and address as sender",
        ),
        {
            "add": _obj(
                "rule",
                chain=CHAIN_CHECK,
                expr=[_DROP],
                comment=f"{BASE_COMMENT}: anything else (forged MAC or address, other EtherType)",
            )
        },
    ]
    return cmds


BASE_RULES = [c for c in base_commands() if "rule" in c.get("add", {})]


def _nd_key(addr: ipaddress.IPv6Address) -> str:
    return f"0x{int(addr):032x}"


def elements(port: Port) -> dict[str, list[Any]]:
    """Set name -> the keys ``port`` adds (untagged)."""
    ll = link_local(port.mac)
    v6 = [a for a in (port.ip6, ll) if a is not None]
    mac, ifn = port.mac.lower(), port.ifname
    return {
        SET_PORTS: [ifn],
        SET_ALLOW4: [_concat(ifn, mac, str(port.ip4))] if port.ip4 is not None else [],
        SET_ALLOW6: [_concat(ifn, mac, str(a)) for a in [*v6, ipaddress.IPv6Address(0)]],
        SET_ARP: [_concat(ifn, mac, mac, str(port.ip4))] if port.ip4 is not None else [],
        SET_ND: [_concat(ifn, _nd_key(a)) for a in v6],
    }


def add_commands(port: Port) -> list[Cmd]:
    """Add ``port``'s elements, each tagged with its owner (``add`` of a present key is a no-op)."""
    tag = nft_comment(port.owner)
    return [
        {"add": _obj("element", name=name, elem=[{"elem": {"val": k, "comment": tag}} for k in keys])}
        for name, keys in elements(port).items()
        if keys
    ]


def _set_elems(table_json: dict[str, Any]) -> Iterable[tuple[str, Any, str | None]]:
    """(set name, key, comment) of every element of our table."""
    for item in table_json.get("nftables", []):
        s = item.get("set") if isinstance(item, dict) else None
        if not isinstance(s, dict) or s.get("family") != FAMILY or s.get("table") != TABLE:
            continue
        for raw in s.get("elem", []):
            if isinstance(raw, dict) and "elem" in raw:
                yield s["name"], raw["elem"].get("val"), raw["elem"].get("comment")
            else:
                yield s["name"], raw, None


def remove_commands(owner: str, table_json: dict[str, Any]) -> list[Cmd]:
    """Delete every element tagged ``owner``, or instead the whole table when no other element is
    in it (also when it is empty already); no command when the table is absent.

    The table is the host's, shared by every state directory, and every protected port of any of
    them has elements in it: no element left means no sandbox anywhere is protected, so the base
    chain (a lookup on every bridged frame) has nothing to do. The caller holds the table lock,
    under which ``ensure_antispoof`` creates the table again for the next sandbox."""
    tag = nft_comment(owner)
    by_set: dict[str, list[Any]] = {}
    others = 0
    for name, key, comment in _set_elems(table_json):
        if comment == tag:
            by_set.setdefault(name, []).append(key)
        else:
            others += 1
    if table_json and not others:
        return [_delete_table()]
    return [{"delete": _obj("element", name=n, elem=keys)} for n, keys in by_set.items()]


def _delete_table() -> Cmd:
    return {"delete": {"table": {"family": FAMILY, "name": TABLE}}}


def delete_if_unused(table_json: dict[str, Any]) -> list[Cmd]:
    """Delete the table when it exists and holds no element of anyone (else no command)."""
    if not table_json or next(iter(_set_elems(table_json)), None) is not None:
        return []
    return [_delete_table()]


def owners(table_json: dict[str, Any]) -> set[str]:
    """The owner tags present in the table."""
    return {c for _, _, c in _set_elems(table_json) if c}


def ports(table_json: dict[str, Any]) -> dict[str, str]:
    """Protected port -> its owner tag."""
    return {k: c or "" for n, k, c in _set_elems(table_json) if n == SET_PORTS and isinstance(k, str)}


def _norm_key(key: Any) -> str:
    if isinstance(key, dict) and "concat" in key:
        parts = []
        for p in key["concat"]:
            try:
                parts.append(str(ipaddress.ip_address(p)))
            except ValueError:
                parts.append(str(p).lower())
        return " . ".join(parts)
    return str(key)


def missing(port: Port, table_json: dict[str, Any]) -> list[str]:
    """What of ``port``'s protection is absent from the table (empty: whole). Names the base
    when the chains or sets are gone (a ``nft flush ruleset``), else each missing element."""
    return missing_each([port], table_json)[0]


def missing_each(ports: Sequence[Port], table_json: dict[str, Any]) -> list[list[str]]:
    """``missing`` for every port, in order, from one pass over the table: a restore of k
    sandboxes costs one read and O(table + k) work, not k reads of a table that grows with k."""
    if not table_json:
        return [[f"table {FAMILY} {TABLE}"] for _ in ports]
    names = {
        (kind, obj.get("name"))
        for item in table_json.get("nftables", [])
        for kind, obj in item.items()
        if isinstance(obj, dict) and obj.get("table") == TABLE and obj.get("family") == FAMILY
    }
    base = [f"set {s}" for s in SETS if ("set", s) not in names]
    base += [f"chain {c}" for c in (CHAIN_HOOK, CHAIN_CHECK) if ("chain", c) not in names]
    rules = sum(
        1
        for item in table_json.get("nftables", [])
        if isinstance(item.get("rule"), dict) and item["rule"].get("table") == TABLE
    )
    if not base and rules < len(BASE_RULES):
        base.append("rules")
    have = {(n, _norm_key(k)) for n, k, _ in _set_elems(table_json)}
    out = []
    for port in ports:
        gone = list(base)
        for name, keys in elements(port).items():
            gone += [f"{name} {_norm_key(k)}" for k in keys if (name, _norm_key(k)) not in have]
        out.append(gone)
    return out
