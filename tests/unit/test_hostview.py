"""hostview: what every table's filter chains do to a new connection, on hand-written rulesets
shaped like iptables-nft's ufw chains, our own table and a hardened nftables.conf."""

from __future__ import annotations

import ipaddress
from typing import Any

from portwright.diagnose import nftview
from portwright.diagnose.hostview import FilterPacket, verdict


def chain(
    family: str, table: str, name: str, hook: str | None = None, policy: str = "accept"
) -> dict[str, Any]:
    c: dict[str, Any] = {"family": family, "table": table, "name": name}
    if hook:
        c.update(type="filter", hook=hook, prio=0, policy=policy)
    return {"chain": c}


def rule(family: str, table: str, ch: str, *expr: dict[str, Any], handle: int = 1) -> dict[str, Any]:
    return {"rule": {"family": family, "table": table, "chain": ch, "handle": handle, "expr": list(expr)}}


def dport(p: int) -> list[dict[str, Any]]:
    return [
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": p}},
    ]


CT_EST = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}
SADDR = {
    "match": {
        "op": "==",
        "left": {"payload": {"protocol": "ip", "field": "saddr"}},
        "right": {"prefix": {"addr": "198.19.250.0", "len": 24}},
    }
}
XT_CT = {"xt": {"type": "match", "name": "conntrack"}}


def ufw_like(*user: dict[str, Any], input_policy: str = "drop") -> nftview.Ruleset:
    items: list[dict[str, Any]] = [
        {"table": {"family": "ip", "name": "filter"}},
        chain("ip", "filter", "INPUT", "input", input_policy),
        chain("ip", "filter", "FORWARD", "forward", "drop"),
        chain("ip", "filter", "ufw-before-input"),
        chain("ip", "filter", "ufw-user-input"),
        rule("ip", "filter", "INPUT", {"jump": {"target": "ufw-before-input"}}),
        rule("ip", "filter", "ufw-before-input", XT_CT, {"accept": None}, handle=2),
        rule("ip", "filter", "ufw-before-input", {"jump": {"target": "ufw-user-input"}}, handle=3),
        *user,
    ]
    rs = nftview.parse_ruleset({"nftables": items})
    save = "-A INPUT -j ufw-before-input\n-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
    save += "-A ufw-before-input -j ufw-user-input\n" + "".join("-A ufw-user-input -x\n" for _ in user)
    nftview.resolve_conntrack(rs, "ip", save)
    return rs


HOST = ipaddress.ip_address("198.19.250.5")


def test_established_only_accept_does_not_admit_new_connections() -> None:
    v = verdict(ufw_like(), FilterPacket("input", "tcp", HOST, 8080))
    assert v.kind == "drop" and "INPUT policy DROP" in v.reason()


def test_ufw_deny_and_allow_are_named() -> None:
    deny = rule("ip", "filter", "ufw-user-input", *dport(8080), {"drop": None}, handle=9)
    v = verdict(ufw_like(deny, input_policy="accept"), FilterPacket("input", "tcp", HOST, 8080))
    assert v.kind == "drop" and v.reason().startswith("ufw's deny")
    allow = rule("ip", "filter", "ufw-user-input", *dport(8080), {"accept": None}, handle=9)
    v = verdict(ufw_like(allow), FilterPacket("input", "tcp", HOST, 8080))
    assert v.kind == "accept" and v.ufw and not v.only_from
    assert verdict(ufw_like(allow), FilterPacket("input", "tcp", HOST, 8081)).kind == "drop"


def test_allow_from_one_subnet_is_qualified_and_a_source_drop_does_not_close_the_port() -> None:
    allow = rule("ip", "filter", "ufw-user-input", SADDR, *dport(8080), {"accept": None}, handle=9)
    v = verdict(ufw_like(allow), FilterPacket("input", "tcp", HOST, 8080))
    assert v.kind == "accept" and [str(n) for n in v.only_from] == ["198.19.250.0/24"]
    block = rule("ip", "filter", "ufw-user-input", SADDR, *dport(8080), {"drop": None}, handle=9)
    assert (
        verdict(ufw_like(block, input_policy="accept"), FilterPacket("input", "tcp", HOST, 8080)).kind
        == "accept"
    )


def test_accept_in_one_table_does_not_save_a_packet_another_table_drops() -> None:
    items: list[dict[str, Any]] = [
        {"table": {"family": "inet", "name": "portwright"}},
        {
            "set": {
                "family": "inet",
                "table": "portwright",
                "name": "bridges",
                "type": "ifname",
                "elem": ["pw-1"],
            }
        },
        chain("inet", "portwright", "forward", "forward"),
        rule(
            "inet",
            "portwright",
            "forward",
            {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@bridges"}},
            {"accept": None},
        ),
        {"table": {"family": "inet", "name": "hardened"}},
        chain("inet", "hardened", "fwdrop", "forward", "drop"),
    ]
    rs = nftview.parse_ruleset({"nftables": items})
    pkt = FilterPacket("forward", "tcp", ipaddress.ip_address("198.18.0.2"), 8000, "eth0", "pw-1", True)
    v = verdict(rs, pkt)
    assert v.kind == "drop" and "fwdrop policy DROP (inet table hardened)" in v.reason()
    rs.chains[("inet", "hardened", "fwdrop")] = nftview.Chain(
        "inet", "hardened", "fwdrop", "forward", "filter", 0, "accept"
    )
    v = verdict(rs, pkt)
    assert v.kind == "accept" and v.rule is not None and v.rule.table == "portwright"
    # Not DNATed, or to another interface: our accept does not apply.
    assert verdict(rs, FilterPacket("forward", "tcp", pkt.daddr, 8000, "eth0", "eth1", True)).rule is None
