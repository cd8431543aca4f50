"""nftables rule generation for the kernel NAT publisher: the model in, nft JSON commands out.

This module is pure (no I/O): it turns Networks and Mappings into libnftables JSON command
objects (``{"add": {"rule": ...}}``) and reads a listed table back (``nft -j list table``) to
find what an owner or a network left there. ``firewall.backend.Firewall`` applies the commands as
one atomic transaction. Keeping generation pure lets golden files pin the exact ruleset.

Everything lives in one table, ``inet portwright`` (both families, never mixed into Docker's or
anyone else's tables). Publishing is data, not rules: each published port is one element in one
of four maps, so one lookup serves 1 or 10,000 ports and no chain grows with the number of
ports. Every map element carries its owner's tag as its nft comment ("pw:<sandbox id>" from the
engine, "cni:<container id>:<ifname>:<network>" from the CNI plugin; ``portwright.owners`` makes
and reads every tag), so teardown deletes exactly that owner's elements, found in the live table,
with no other record needed.

Every nft rule portwright installs is generated here, the CNI plugin's masquerade rules for
bridges it did not create included (``bridge_masquerade_commands``), and so is the one decision
of what kernel NAT cannot serve and the userland relay must (``nat_capable``, ``needs_relay``).

Packet paths and the rule serving each (model: containernetworking/plugins portmap, nft backend):

* another machine -> host address:P: PREROUTING (nat, dstnat) DNATs packets whose destination is
  a local address through the maps; FORWARD accepts DNATed traffic into our bridges; the source
  address is kept, so the sandbox sees the real client.
* host -> 127.0.0.1:P or -> its own address:P: OUTPUT (nat) DNATs through the same maps;
  POSTROUTING masquerades host-local sources into the bridge (127.0.0.1 cannot be a source on
  the wire; it needs route_localnet=1 on the bridge to be routed at all, which the engine sets).
* sandbox -> host address:P -> same bridge (hairpin): masqueraded, or the reply would go
  straight back over the bridge and miss the reverse NAT.
* 127.0.0.0/8 arriving on any interface but lo is dropped before DNAT (Docker #45610, #41872).
* [::1]:P is never DNATed (IPv6 cannot route a loopback source out of lo); the engine serves it
  with a proxy listener, so the publish chain returns early for ::1.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from portwright.errors import BadInput
from portwright.model import IPAddress, Mapping, Network, address_text, bindings_clash

# The tags' prefixes and nft's comment limit are re-exported, as callers of this module knew them.
from portwright.owners import BASE_TAG as BASE_TAG
from portwright.owners import HASHED_PREFIX as HASHED_PREFIX
from portwright.owners import MAX_COMMENT as MAX_COMMENT
from portwright.owners import NET_TAG_PREFIX as NET_TAG_PREFIX
from portwright.owners import network_tag, nft_comment, parse_owner

Cmd = dict[str, Any]

TABLE = "portwright"
FAMILY = "inet"

# --- Chains: name, hook priority and the reason for each (numbers as in the kernel's
# enum nf_ip_hook_priorities: raw -300, mangle -150, dstnat -100, filter 0, srcnat 100). -------

# Drops 127.0.0.0/8 arriving on a non-loopback interface. It must run before DNAT (-100) or a
# 127.0.0.1-only mapping would be DNATed and forwarded for a neighbour that routes 127/8 to us.
CHAIN_GUARD = "guard"
PRIO_GUARD = -110

# DNAT of traffic arriving from outside (other machines, other sandboxes, hairpin). dstnat.
CHAIN_PREROUTING = "prerouting"
PRIO_PREROUTING = -100

# DNAT of locally generated traffic (host -> 127.0.0.1:P, host -> own address:P). dstnat.
CHAIN_OUTPUT = "output"
PRIO_OUTPUT = -100

# Masquerade: host-local sources, hairpin and sandbox egress. srcnat, after routing decided oif.
CHAIN_POSTROUTING = "postrouting"
PRIO_POSTROUTING = 100

# Filter of forwarded traffic: published ports in, sandboxes out, isolation. filter priority.
# Policy accept: this table never blocks traffic that is not going to or from our bridges.
CHAIN_FORWARD = "forward"
PRIO_FORWARD = 0

# Regular chains. "publish" holds the four map lookups and is jumped to from both DNAT hooks.
# The "net-*" chains hold the per-network rules, so base_commands can flush and rewrite the
# fixed rules of the base chains without touching any network's rules.
CHAIN_PUBLISH = "publish"
CHAIN_NET_FORWARD = "net-forward"
CHAIN_NET_POSTROUTING = "net-postrouting"

# Chains whose rules are all fixed (rewritten by base_commands on every start).
FIXED_CHAINS = (CHAIN_GUARD, CHAIN_PREROUTING, CHAIN_OUTPUT, CHAIN_PUBLISH, CHAIN_POSTROUTING, CHAIN_FORWARD)

# --- Sets and maps. -----------------------------------------------------------------------------
RESOLVER_PORT = 53  # DNS (RFC 1035): where each network's resolver listens on its gateway
SET_BRIDGES = "bridges"  # every portwright bridge (ifname); elements tagged "pw-net:<name>"
MAP_ANY4 = "pub4_any"  # l4proto . dport            -> sandbox v4 addr . port (0.0.0.0 bindings)
MAP_ADDR4 = "pub4_addr"  # daddr . l4proto . dport    -> sandbox v4 addr . port (one host address)
MAP_ANY6 = "pub6_any"  # the same for IPv6 (:: bindings)
MAP_ADDR6 = "pub6_addr"
PUB_MAPS = (MAP_ADDR4, MAP_ANY4, MAP_ADDR6, MAP_ANY6)

_MAP_TYPES: dict[str, tuple[list[str], list[str]]] = {
    MAP_ANY4: (["inet_proto", "inet_service"], ["ipv4_addr", "inet_service"]),
    MAP_ADDR4: (["ipv4_addr", "inet_proto", "inet_service"], ["ipv4_addr", "inet_service"]),
    MAP_ANY6: (["inet_proto", "inet_service"], ["ipv6_addr", "inet_service"]),
    MAP_ADDR6: (["ipv6_addr", "inet_proto", "inet_service"], ["ipv6_addr", "inet_service"]),
}

IFNAMSIZ = 15  # longest Linux interface name

# --- Comment tags: made and read by portwright.owners (one helper for every kind of tag). ----------


def owner_tag(owner: str) -> str:
    """The nft comment that marks ``owner``'s elements and rules (``owners.nft_comment``)."""
    return nft_comment(owner)


def net_tag(net_name: str) -> str:
    """The comment of network ``net_name``'s rules and bridge element (``owners.network_tag``)."""
    return network_tag(net_name)


# ------------------------------------------------------------------------------------------------
# Small JSON expression builders (libnftables-json(5) schema)
# ------------------------------------------------------------------------------------------------


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _fib_type(flag: str) -> dict[str, Any]:
    return {"fib": {"result": "type", "flags": [flag]}}


def _prefix(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> dict[str, Any]:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


_CT_DNAT = _match({"ct": {"key": "status"}}, "dnat", "in")
_CT_ESTABLISHED = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
_L4PORT = [_meta("l4proto"), _payload("th", "dport")]
_MASQ: dict[str, Any] = {"masquerade": None}
_ACCEPT: dict[str, Any] = {"accept": None}
_DROP: dict[str, Any] = {"drop": None}
_RETURN: dict[str, Any] = {"return": None}


def _obj(kind: str, **fields: Any) -> dict[str, Any]:
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


def _rule(chain: str, expr: list[dict[str, Any]], comment: str) -> Cmd:
    return {"add": _obj("rule", chain=chain, expr=expr, comment=comment)}


def _base(chain: str, expr: list[dict[str, Any]], why: str) -> Cmd:
    return _rule(chain, expr, f"{BASE_TAG}: {why}")


def _dnat(family: str, key: list[dict[str, Any]], map_name: str) -> dict[str, Any]:
    # "dnat ip to <key> map @m": the map's data is "addr . port", so one lookup yields both.
    # type_flags "concat" says so explicitly; nft 1.0.6 (Debian 12) crashes parsing the
    # three-part key form without it.
    return {
        "dnat": {
            "family": family,
            "addr": {"map": {"key": {"concat": key}, "data": "@" + map_name}},
            "type_flags": ["concat"],
        }
    }


# ------------------------------------------------------------------------------------------------
# Base: table, chains, sets, maps and the fixed rules
# ------------------------------------------------------------------------------------------------


def base_commands() -> list[Cmd]:
    """Idempotent creation of the table and its fixed part; safe on every start.

    ``add`` of an existing table, chain, set or map is a no-op and keeps its elements and the
    per-network rules (which live in the net-* chains). The fixed chains are flushed and
    rewritten in the same transaction, so an upgraded ruleset replaces an old one atomically and
    re-running never duplicates a rule.
    """
    cmds: list[Cmd] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    hooks = [
        (CHAIN_GUARD, "filter", "prerouting", PRIO_GUARD),
        (CHAIN_PREROUTING, "nat", "prerouting", PRIO_PREROUTING),
        (CHAIN_OUTPUT, "nat", "output", PRIO_OUTPUT),
        (CHAIN_POSTROUTING, "nat", "postrouting", PRIO_POSTROUTING),
        (CHAIN_FORWARD, "filter", "forward", PRIO_FORWARD),
    ]
    for name, ctype, hook, prio in hooks:
        cmds.append({"add": _obj("chain", name=name, type=ctype, hook=hook, prio=prio, policy="accept")})
    for name in (CHAIN_PUBLISH, CHAIN_NET_FORWARD, CHAIN_NET_POSTROUTING):
        cmds.append({"add": _obj("chain", name=name)})
    cmds.append({"add": _obj("set", name=SET_BRIDGES, type="ifname")})
    for name in PUB_MAPS:
        key_type, data_type = _MAP_TYPES[name]
        cmds.append({"add": _obj("map", name=name, type=key_type, map=data_type)})
    for name in FIXED_CHAINS:
        cmds.append({"flush": {"chain": {"family": FAMILY, "table": TABLE, "name": name}}})
    cmds.extend(_fixed_rules())
    return cmds


def _resolver_exemption() -> Cmd:
    """A sandbox asking its own gateway for names reaches the resolver (pw-dns, dns/server.py),
    never a sandbox that publishes host port 53 on every address: the gateway is a local
    address, so the publish maps would DNAT the whole network's queries to it (issue 14).
    "fib daddr . iif type local": the destination is an address of the very bridge the packet
    came in on, i.e. its gateway; any other local address is still published. In prerouting,
    not in publish: the kernel refuses fib's iif in the output hook, which jumps to publish too
    (and the host's own queries never come in on a bridge)."""
    return _base(
        CHAIN_PREROUTING,
        [
            _match(_meta("iifname"), "@" + SET_BRIDGES),
            _match({"fib": {"result": "type", "flags": ["daddr", "iif"]}}, "local"),
            _match(_meta("l4proto"), {"set": ["tcp", "udp"]}),
            _match(_payload("th", "dport"), RESOLVER_PORT),
            _RETURN,
        ],
        "a bridge's own gateway, port 53, is the resolver's",
    )


def _fixed_rules() -> list[Cmd]:
    in_bridges = _match(_meta("oifname"), "@" + SET_BRIDGES)
    return [
        # guard: a packet for 127.0.0.0/8 that did not come from lo was routed to us on purpose
        # by a neighbour; without this, a 127.0.0.1-only mapping would be DNATed for it.
        _base(
            CHAIN_GUARD,
            [
                _match(_meta("iif"), "lo", "!="),
                _match(_payload("ip", "daddr"), _prefix(ipaddress.ip_network("127.0.0.0/8"))),
                _DROP,
            ],
            "loopback destinations only from lo",
        ),
        _base(
            CHAIN_GUARD,
            [_match(_meta("iif"), "lo", "!="), _match(_payload("ip6", "daddr"), "::1"), _DROP],
            "loopback destinations only from lo",
        ),
        _resolver_exemption(),
        # DNAT only what is addressed to this host (any local address incl. 127.0.0.1), as
        # Docker's "-m addrtype --dst-type LOCAL"; traffic passing through is never rewritten.
        _base(
            CHAIN_PREROUTING,
            [_match(_fib_type("daddr"), "local"), {"jump": {"target": CHAIN_PUBLISH}}],
            "published ports, from outside",
        ),
        _base(
            CHAIN_OUTPUT,
            [_match(_fib_type("daddr"), "local"), {"jump": {"target": CHAIN_PUBLISH}}],
            "published ports, from this host",
        ),
        # [::1] cannot be DNATed: the kernel refuses to route a ::1 source out of lo. Leave it
        # to the engine's ::1 proxy listener instead of breaking it with a DNAT.
        _base(
            CHAIN_PUBLISH,
            [_match(_payload("ip6", "daddr"), "::1"), _RETURN],
            "::1 is served by a proxy, not DNAT",
        ),
        # Specific host addresses first: "-p 198.18.0.1:80:80" wins over "-p 80:80" for its
        # address, like a bind() to one address beside a wildcard bind. A map miss ends the rule
        # and falls through to the next; a hit DNATs and ends the chain.
        _base(
            CHAIN_PUBLISH,
            [_dnat("ip", [_payload("ip", "daddr"), *_L4PORT], MAP_ADDR4)],
            "v4, one host address",
        ),
        _base(CHAIN_PUBLISH, [_dnat("ip", _L4PORT, MAP_ANY4)], "v4, any host address"),
        _base(
            CHAIN_PUBLISH,
            [_dnat("ip6", [_payload("ip6", "daddr"), *_L4PORT], MAP_ADDR6)],
            "v6, one host address",
        ),
        _base(CHAIN_PUBLISH, [_dnat("ip6", _L4PORT, MAP_ANY6)], "v6, any host address"),
        # Host-local sources (127.0.0.1 via route_localnet, or the host's own addresses) going to
        # a published port: masquerade to the bridge address, since 127.0.0.1 is not a valid
        # source on a wire and the sandbox must answer through the host. External sources are
        # not local, so they keep their address.
        _base(
            CHAIN_POSTROUTING,
            [in_bridges, _CT_DNAT, _match(_fib_type("saddr"), "local"), _MASQ],
            "host-local source to a published port",
        ),
        _base(CHAIN_POSTROUTING, [{"jump": {"target": CHAIN_NET_POSTROUTING}}], "per-network rules"),
        # Replies and related ICMP of flows we already allowed.
        _base(CHAIN_FORWARD, [_CT_ESTABLISHED, _ACCEPT], "replies"),
        # Published ports: anything DNATed by this table into one of our bridges.
        _base(CHAIN_FORWARD, [_CT_DNAT, in_bridges, _ACCEPT], "published ports into sandboxes"),
        _base(CHAIN_FORWARD, [{"jump": {"target": CHAIN_NET_FORWARD}}], "per-network rules"),
        # Nothing else is routed into a sandbox from outside its bridge: reaching a sandbox's own
        # address directly is not publishing (Docker's FORWARD policy DROP has the same effect).
        _base(CHAIN_FORWARD, [in_bridges, _DROP], "only published ports reach sandboxes"),
    ]


# ------------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------------


def _check_bridge(net: Network) -> None:
    if not net.bridge or len(net.bridge) > IFNAMSIZ or "/" in net.bridge or " " in net.bridge:
        raise BadInput(
            f"bridge name {net.bridge!r} of network {net.name!r} is not a valid interface "
            f"name; use 1-{IFNAMSIZ} characters without '/' or spaces"
        )


def network_commands(net: Network) -> list[Cmd]:
    """The rules of one network, each tagged ``pw-net:<name>``, plus its bridge set element."""
    _check_bridge(net)
    tag = net_tag(net.name)
    br = net.bridge
    iif, oif = _match(_meta("iifname"), br), _match(_meta("oifname"), br)
    to_our_bridges = _match(_meta("oifname"), "@" + SET_BRIDGES)
    cmds: list[Cmd] = [
        {"add": _obj("element", name=SET_BRIDGES, elem=[{"elem": {"val": br, "comment": tag}}])},
        # Sandboxes on one bridge talk freely. Only seen here when br_netfilter passes bridged
        # frames through iptables/nft (dockerd loads it), but then it is needed.
        _rule(CHAIN_NET_FORWARD, [iif, oif, _ACCEPT], tag),
    ]
    if net.internal:
        # Internal network: nothing is forwarded out of it (replies to published ports are
        # already accepted as established).
        cmds.append(_rule(CHAIN_NET_FORWARD, [iif, _DROP], tag))
    else:
        # Isolation: no new flow from this bridge into another portwright bridge, except through
        # a published port (accepted earlier as DNATed traffic).
        cmds.append(_rule(CHAIN_NET_FORWARD, [iif, to_our_bridges, _DROP], tag))
    # Hairpin: a sandbox reaching a published port of its own bridge (itself or a neighbour).
    # Without masquerade the server would answer the client directly over the bridge and the
    # client, expecting the host address, would drop the reply. Matched on the source subnet,
    # not on iifname: the input interface is not known in the postrouting hook.
    for hp_net in [net.subnet4] + ([net.subnet6] if net.subnet6 is not None else []):
        hp_fam = "ip" if hp_net.version == 4 else "ip6"
        cmds.append(
            _rule(
                CHAIN_NET_POSTROUTING,
                [_match(_payload(hp_fam, "saddr"), _prefix(hp_net)), oif, _CT_DNAT, _MASQ],
                tag,
            )
        )
    if not net.internal:
        # Egress: the subnet leaves through the host's address. Traffic into our own bridges is
        # not rewritten, so a sandbox on another network keeps its address at a published port.
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [net.subnet4]
        if net.subnet6 is not None:
            nets.append(net.subnet6)
        for subnet in nets:
            fam = "ip" if subnet.version == 4 else "ip6"
            cmds.append(
                _rule(
                    CHAIN_NET_POSTROUTING,
                    [
                        _match(_payload(fam, "saddr"), _prefix(subnet)),
                        _match(_meta("oifname"), "@" + SET_BRIDGES, "!="),
                        _MASQ,
                    ],
                    tag,
                )
            )
    return cmds


def remove_network_commands(
    net_name: str, table_json: dict[str, Any], net: Network | None = None
) -> list[Cmd]:
    """Delete the rules and bridge element tagged ``pw-net:<net_name>`` found in the live table.

    With ``net``, only that network's own: its bridge element and the tagged rules that name its
    bridge or one of its subnets. Two state directories (tests, benches) may each have a network
    of the same name on one host; putting one back must never take the other's away, or their
    watchers would undo each other after every nftables event."""
    tag = net_tag(net_name)
    if net is None:
        return _delete_tagged(tag, table_json, (SET_BRIDGES,))
    cmds: list[Cmd] = []
    keys = [k for k, _, c in _set_elements(table_json, SET_BRIDGES) if c == tag and k == net.bridge]
    if keys:
        cmds.append({"delete": _obj("element", name=SET_BRIDGES, elem=keys)})
    for rule in network_rules(net, table_json):
        cmds.append({"delete": _obj("rule", chain=rule["chain"], handle=rule["handle"])})
    return cmds


def network_rules(net: Network, table_json: dict[str, Any]) -> list[dict[str, Any]]:
    """The live rules of ``net``: tagged with its name, and naming its bridge or a subnet (every
    rule ``network_commands`` makes does one or the other)."""
    marks = [f'"{net.bridge}"'] + [
        f'"{n.network_address}"' for n in (net.subnet4, net.subnet6) if n is not None
    ]
    tag = net_tag(net.name)
    out = []
    for rule in _objects(table_json, "rule"):
        if rule.get("comment") == tag:
            text = json.dumps(rule.get("expr"))
            if any(m in text for m in marks):
                out.append(rule)
    return out


# ------------------------------------------------------------------------------------------------
# Publishing
# ------------------------------------------------------------------------------------------------


def nat_capable(m: Mapping) -> bool:
    """Whether kernel NAT can serve ``m``.

    Not for a ``::1`` binding (IPv6 never routes a loopback source off lo, so the engine serves
    it with a proxy) and not across families (a v6 host binding to a v4 sandbox needs a proxy).
    """
    host = m.host_ip
    # Class identity, and ::1 as the integer 1: asked of 20,000 mappings several times a run at
    # 10,000 ports, where ``version`` and ``is_loopback`` are Python properties (#11).
    if type(host) is not type(m.container_ip):
        return False
    return not (type(host) is ipaddress.IPv6Address and int(host) == 1)


def needs_relay(m: Mapping) -> bool:
    """Whether ``m`` needs the userland relay instead of kernel NAT: the one relay decision.

    ``::1`` (never DNATed, see ``nat_capable``), a binding kernel NAT cannot serve at all, and the
    ``::`` wildcard: its socket only ever sees ``::1`` traffic, because every other IPv6
    destination is DNATed in prerouting/output before it could reach a local socket.
    """
    if m.host_ip.version == 6 and (m.host_ip.is_loopback or m.host_ip.is_unspecified):
        return True
    return not nat_capable(m)


def map_for(m: Mapping) -> str:
    """The map holding ``m``: by family, and wildcard host address or one host address."""
    if m.host_ip.version == 4:
        return MAP_ANY4 if m.wildcard else MAP_ADDR4
    return MAP_ANY6 if m.wildcard else MAP_ADDR6


def _key(m: Mapping) -> dict[str, Any]:
    parts: list[Any] = [m.proto, m.host_port]
    if not m.wildcard:
        parts.insert(0, address_text(m.host_ip))
    return {"concat": parts}


def _value(m: Mapping) -> dict[str, Any]:
    return {"concat": [address_text(m.container_ip), m.container_port]}


def publish_commands(owner: str, mappings: Sequence[Mapping]) -> list[Cmd]:
    """One ``add element`` per map holding every NAT-capable mapping, each tagged with the owner.

    Mappings that kernel NAT cannot serve (see ``nat_capable``) are skipped. The same host
    binding twice in one call is refused. 10,000 mappings are still at most four commands.
    """
    tag = owner_tag(owner)
    per_map: dict[str, list[Any]] = {}
    seen: set[tuple[str, str, str, int]] = set()
    for m in mappings:  # each step once per mapping: 20,000 of them at 10,000 ports (#11)
        if not nat_capable(m):
            continue
        if not (0 < m.host_port < 65536 and 0 < m.container_port < 65536):
            _check_ports(m)
        name = map_for(m)
        host = address_text(m.host_ip)
        key = (name, m.proto, host, m.host_port)
        if key in seen:
            raise BadInput(
                f"host binding {m.host_binding()}/{m.proto} is published twice; "
                "give each mapping its own host port"
            )
        seen.add(key)
        val = [m.proto, m.host_port] if name in (MAP_ANY4, MAP_ANY6) else [host, m.proto, m.host_port]
        per_map.setdefault(name, []).append([{"elem": {"val": {"concat": val}, "comment": tag}}, _value(m)])
    return [{"add": _obj("element", name=name, elem=per_map[name])} for name in PUB_MAPS if name in per_map]


def _check_ports(m: Mapping) -> None:
    for what, port in (("host port", m.host_port), ("container port", m.container_port)):
        if not 1 <= port <= 65535:
            raise BadInput(f"{what} {port} in {m.docker_format()} is out of range; use 1-65535")


def delete_elements_commands(mappings: Sequence[Mapping]) -> list[Cmd]:
    """Delete exactly these NAT-capable mappings' elements, by key, without reading the table:
    one ``delete element`` per map, so 10,000 mappings are still at most four commands. Only for
    a caller that knows no other owner can hold these keys (``ops.Firewall.unpublish``)."""
    per_map: dict[str, list[Any]] = {}
    for m in mappings:
        if nat_capable(m):
            per_map.setdefault(map_for(m), []).append(_key(m))
    return [
        {"delete": _obj("element", name=name, elem=per_map[name])} for name in PUB_MAPS if name in per_map
    ]


def unpublish_commands(owner: str, table_json: dict[str, Any]) -> list[Cmd]:
    """Delete exactly the map elements (and any rules) tagged with ``owner`` in the live table."""
    return _delete_tagged(owner_tag(owner), table_json, PUB_MAPS)


def remove_owner_rules_commands(owner: str, table_json: dict[str, Any]) -> list[Cmd]:
    """Delete the rules (not the map elements) tagged with ``owner`` in the live table."""
    return _delete_tagged(owner_tag(owner), table_json, ())


# ------------------------------------------------------------------------------------------------
# CNI attachments on bridges portwright did not create
# ------------------------------------------------------------------------------------------------


def bridge_masquerade_commands(
    owner: str,
    bridge: str,
    mappings: Sequence[Mapping],
    subnets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> list[Cmd]:
    """Masquerade rules for one CNI attachment on a bridge portwright did not create (``cni0``).

    Our own bridges get these paths from their network's rules; a foreign bridge has none, so
    each attachment brings its own, tagged with its owner (``unpublish_commands`` removes them
    with its elements) and placed in the net-postrouting chain, which ``base_commands`` never
    flushes. Each rule is narrowed to the container's address and to DNATed traffic, so it only
    ever touches flows the attachment's own mappings created:

    * host -> 127.0.0.1:P or -> its own address:P (DNATed in output): the container must answer
      through the host, and 127.0.0.1 is no source on a wire;
    * a container on this bridge -> host address:P -> back into this bridge (hairpin). The client
      is matched by its subnet, not by ``iifname``: with br_netfilter loaded (dockerd loads it) a
      DNAT back into the same bridge is bridged, and postrouting sees no input interface at all.
    """
    if not bridge or len(bridge) > IFNAMSIZ or "/" in bridge or " " in bridge:
        raise BadInput(
            f"bridge name {bridge!r} is not a valid interface name; "
            f"use 1-{IFNAMSIZ} characters without '/' or spaces"
        )
    tag = owner_tag(owner)
    out_br = _match(_meta("oifname"), bridge)
    cmds: list[Cmd] = []
    for cip in sorted({m.container_ip for m in mappings}, key=lambda a: (a.version, int(a))):
        fam = "ip" if cip.version == 4 else "ip6"
        to_container = _match(_payload(fam, "daddr"), str(cip))
        sources = [_match(_fib_type("saddr"), "local")]
        sources += [_match(_payload(fam, "saddr"), _prefix(n)) for n in subnets if n.version == cip.version]
        for src in sources:
            cmds.append(_rule(CHAIN_NET_POSTROUTING, [out_br, to_container, _CT_DNAT, src, _MASQ], tag))
    return cmds


# ------------------------------------------------------------------------------------------------
# Reading a listed table back
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    """One map element of the live table, read back: who publishes which binding to where."""

    map: str
    proto: str
    host_ip: IPAddress
    host_port: int
    container_ip: IPAddress
    container_port: int
    owner: str | None  # the element's comment (an owner tag), None if untagged

    @property
    def wildcard(self) -> bool:
        return self.host_ip.is_unspecified

    def mapping(self) -> Mapping:
        if self.proto not in ("tcp", "udp", "sctp"):
            raise BadInput(f"protocol {self.proto!r} in map {self.map} is not tcp, udp or sctp")
        return Mapping(
            proto=self.proto,  # type: ignore[arg-type]
            host_ip=self.host_ip,
            host_port=self.host_port,
            container_ip=self.container_ip,
            container_port=self.container_port,
        )


def _objects(table_json: dict[str, Any], kind: str) -> Iterable[dict[str, Any]]:
    for item in table_json.get("nftables", []):
        obj = item.get(kind) if isinstance(item, dict) else None
        if isinstance(obj, dict) and obj.get("table") == TABLE and obj.get("family") == FAMILY:
            yield obj


def _split_elem(raw: Any) -> tuple[Any, str | None]:
    """An element's key (or a map element's ``[key, value]`` pair key) and its comment."""
    if isinstance(raw, dict) and "elem" in raw:
        inner = raw["elem"]
        return inner.get("val"), inner.get("comment")
    return raw, None


def _set_elements(table_json: dict[str, Any], name: str) -> Iterable[tuple[Any, Any, str | None]]:
    """(key, value or None, comment) of every element of set/map ``name``."""
    for kind in ("set", "map"):
        for obj in _objects(table_json, kind):
            if obj.get("name") != name:
                continue
            for raw in obj.get("elem", []):
                if kind == "map" and isinstance(raw, list) and len(raw) == 2:
                    key, comment = _split_elem(raw[0])
                    yield key, raw[1], comment
                else:
                    key, comment = _split_elem(raw)
                    yield key, None, comment


def published(table_json: dict[str, Any]) -> list[Published]:
    """Every element of the four publish maps, in map order."""
    out: list[Published] = []
    ips: dict[str, IPAddress] = {}  # 20,000 elements hold a handful of addresses: parse each once (#11)

    def ip(text: str) -> IPAddress:
        a = ips.get(text)
        if a is None:
            a = ips[text] = ipaddress.ip_address(text)
        return a

    for name in PUB_MAPS:
        any_addr = ipaddress.IPv4Address(0) if name == MAP_ANY4 else ipaddress.IPv6Address(0)
        for key, value, comment in _set_elements(table_json, name):
            parts = key["concat"] if isinstance(key, dict) and "concat" in key else None
            data = value["concat"] if isinstance(value, dict) and "concat" in value else None
            if parts is None or data is None or len(data) != 2:
                raise BadInput(
                    f"map {name} element {key!r} has an unexpected shape; "
                    "repair with 'nft delete table inet portwright' and reconcile"
                )
            if name in (MAP_ANY4, MAP_ANY6):
                host_ip: IPAddress = any_addr
                proto, port = parts
            else:
                addr, proto, port = parts
                host_ip = ip(addr)
            out.append(
                Published(
                    map=name,
                    proto=str(proto),
                    host_ip=host_ip,
                    host_port=int(port),
                    container_ip=ip(data[0]),
                    container_port=int(data[1]),
                    owner=comment,
                )
            )
    return out


def owners(table_json: dict[str, Any]) -> set[str]:
    """Every owner tag in the table: map element comments and owner-tagged rule comments."""
    tags = {p.owner for p in published(table_json) if p.owner}
    for rule in _objects(table_json, "rule"):
        c = rule.get("comment")
        if isinstance(c, str) and parse_owner(c).is_owner:
            tags.add(c)
    return tags


def networks(table_json: dict[str, Any]) -> set[str]:
    """Names of the networks that have rules or a bridge element in the table."""
    tags = [c for _, _, c in _set_elements(table_json, SET_BRIDGES) if c]
    tags += [c for c in (rule.get("comment") for rule in _objects(table_json, "rule")) if isinstance(c, str)]
    return {t.name for t in map(parse_owner, tags) if t.kind == "network"}


def bridges(table_json: dict[str, Any]) -> set[str]:
    """The bridges portwright created (its networks' elements of the bridges set)."""
    return {key for key, _, _ in _set_elements(table_json, SET_BRIDGES) if isinstance(key, str)}


def owner_rules(table_json: dict[str, Any], owner: str) -> list[dict[str, Any]]:
    """The rules (not map elements) tagged with ``owner``, as listed."""
    tag = owner_tag(owner)
    return [rule for rule in _objects(table_json, "rule") if rule.get("comment") == tag]


def conflicts(
    owner: str, mappings: Sequence[Mapping], table_json: dict[str, Any]
) -> list[tuple[Mapping, str]]:
    """Mappings that would collide with another owner's element, with that owner's tag.

    Same protocol and host port, and host addresses that clash by ``model.bindings_clash`` (the
    rule ``bind()`` applies: the same address, or either side its family's wildcard), because a
    specific-address element would otherwise silently take traffic from another owner's
    wildcard binding. Elements are per family, so a ``::`` element never covers IPv4.
    """
    tag = owner_tag(owner)
    taken: dict[tuple[str, int], list[Published]] = {}
    for p in published(table_json):
        if p.owner != tag:
            taken.setdefault((p.proto, p.host_port), []).append(p)
    out: list[tuple[Mapping, str]] = []
    for m in mappings:
        if not nat_capable(m):
            continue
        for p in taken.get((m.proto, m.host_port), []):
            if bindings_clash(m.host_ip, p.host_ip):
                out.append((m, p.owner or "an untagged nftables element"))
                break
    return out


def _delete_tagged(tag: str, table_json: dict[str, Any], sets: Sequence[str]) -> list[Cmd]:
    cmds: list[Cmd] = []
    for name in sets:
        keys = [key for key, _, comment in _set_elements(table_json, name) if comment == tag]
        if keys:
            cmds.append({"delete": _obj("element", name=name, elem=keys)})
    for rule in _objects(table_json, "rule"):
        if rule.get("comment") == tag:
            cmds.append({"delete": _obj("rule", chain=rule["chain"], handle=rule["handle"])})
    return cmds


def table_commands_delete() -> list[Cmd]:
    """Delete the whole table (the caller makes sure nothing in it is still needed)."""
    return [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]
