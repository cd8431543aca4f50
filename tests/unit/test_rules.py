"""Golden-file and property tests of firewall.rules (pure: no root, no nft).

Golden files live in tests/golden/. Regenerate them after an intended change with
``PW_UPDATE_GOLDEN=1 pytest tests/unit/test_rules.py`` and review the diff.
``live_table.json`` is an input, not an output: a real ``nft -j list table inet portwright``
(nft 1.0.6) holding networks "web" and "db", owner "pw:0123456789ab" and a CNI owner that has
elements and one rule; it is how unpublish and the readers are tested against real output.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest
from nftdata import DB, GOLDEN, WEB, m

from portwright.errors import BadInput
from portwright.firewall import rules
from portwright.model import Network

OWNER_A = "pw:0123456789ab"
OWNER_CNI = "cni:" + "f" * 64 + ":eth0"

MAPPINGS = [
    m("tcp", "0.0.0.0", 8080, "198.18.5.2", 80),
    m("tcp", "::", 8080, "2001:2:5::2", 80),
    m("udp", "127.0.0.1", 5353, "198.18.5.2", 53),
    m("tcp", "198.18.5.1", 8081, "198.18.5.2", 81),
    m("sctp", "2001:2:5::1", 3868, "2001:2:5::2", 3868),
    m("tcp", "::1", 8080, "2001:2:5::2", 80),  # not NAT-capable: proxy serves ::1
    m("tcp", "::", 8082, "198.18.5.2", 82),  # not NAT-capable: v6 host -> v4 sandbox
]


def golden(name: str, data: Any) -> None:
    path = GOLDEN / name
    text = json.dumps(data, indent=1, sort_keys=False) + "\n"
    if os.environ.get("PW_UPDATE_GOLDEN") == "1" or not path.exists():
        if not os.environ.get("PW_UPDATE_GOLDEN") and not path.exists():
            path.write_text(text)
            pytest.fail(f"golden file {name} was missing and has been written; review and commit it")
        path.write_text(text)
    assert json.loads(path.read_text()) == data, f"{name} differs; rerun with PW_UPDATE_GOLDEN=1 if intended"


@pytest.fixture
def live() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / "live_table.json").read_text())
    return data


# --- golden outputs ------------------------------------------------------------------------------


def test_base_golden() -> None:
    golden("base.json", rules.base_commands())


def test_network_golden() -> None:
    golden("network_web.json", rules.network_commands(WEB))


def test_internal_network_golden() -> None:
    cmds = rules.network_commands(DB)
    golden("network_db_internal.json", cmds)
    flat = json.dumps(cmds)
    assert "masquerade" in flat  # hairpin only
    # No egress masquerade for an internal network: every masquerade is limited to DNATed
    # traffic going back into its own bridge.
    masq = [c for c in cmds if "masquerade" in json.dumps(c)]
    assert masq and all('"dnat"' in json.dumps(c) and '"!="' not in json.dumps(c) for c in masq)


def test_publish_golden() -> None:
    golden("publish.json", rules.publish_commands(OWNER_A, MAPPINGS))


def test_unpublish_golden(live: dict[str, Any]) -> None:
    golden("unpublish_cni.json", rules.unpublish_commands(OWNER_CNI, live))


def test_remove_network_golden(live: dict[str, Any]) -> None:
    golden("remove_network_web.json", rules.remove_network_commands("web", live))


# --- structure -------------------------------------------------------------------------------------


def test_base_is_rerunnable_and_never_flushes_elements() -> None:
    cmds = rules.base_commands()
    verbs = {next(iter(c)) for c in cmds}
    assert verbs == {"add", "flush"}
    flushed = {c["flush"]["chain"]["name"] for c in cmds if "flush" in c}
    assert flushed == set(rules.FIXED_CHAINS)
    # per-network and per-owner rules live in chains base_commands never flushes
    assert rules.CHAIN_NET_FORWARD not in flushed and rules.CHAIN_NET_POSTROUTING not in flushed
    assert not any("set" in c.get("flush", {}) or "map" in c.get("flush", {}) for c in cmds)
    # every fixed rule is tagged as such, so owners()/networks() never mistake it
    for c in cmds:
        if "rule" in c.get("add", {}):
            assert c["add"]["rule"]["comment"].startswith(rules.BASE_TAG)


def test_guard_runs_before_dnat() -> None:
    chains = {
        c["add"]["chain"]["name"]: c["add"]["chain"]
        for c in rules.base_commands()
        if "chain" in c.get("add", {}) and "hook" in c["add"]["chain"]
    }
    assert chains[rules.CHAIN_GUARD]["hook"] == chains[rules.CHAIN_PREROUTING]["hook"] == "prerouting"
    assert chains[rules.CHAIN_GUARD]["prio"] < chains[rules.CHAIN_PREROUTING]["prio"]


def test_specific_address_maps_are_looked_up_first() -> None:
    order = [
        c["add"]["rule"]["expr"][0]["dnat"]["addr"]["map"]["data"]
        for c in rules.base_commands()
        if "rule" in c.get("add", {})
        and c["add"]["rule"]["chain"] == rules.CHAIN_PUBLISH
        and "dnat" in c["add"]["rule"]["expr"][0]
    ]
    assert order == ["@" + rules.MAP_ADDR4, "@" + rules.MAP_ANY4, "@" + rules.MAP_ADDR6, "@" + rules.MAP_ANY6]


def test_every_network_command_is_tagged() -> None:
    for c in rules.network_commands(WEB):
        body = c["add"]
        if "rule" in body:
            assert body["rule"]["comment"] == "pw-net:web"
        else:
            assert body["element"]["elem"] == [{"elem": {"val": "pwbr0", "comment": "pw-net:web"}}]


def test_ten_thousand_mappings_are_one_batch_of_elements() -> None:
    many = [m("tcp", "0.0.0.0", 20000 + i, "198.18.5.2", 20000 + i) for i in range(5000)]
    many += [m("udp", "::", 20000 + i, "2001:2:5::2", 20000 + i) for i in range(5000)]
    cmds = rules.publish_commands(OWNER_A, many)
    assert len(cmds) == 2  # one "add element" per map used, no rule
    assert all(list(c) == ["add"] and list(c["add"]) == ["element"] for c in cmds)
    assert [c["add"]["element"]["name"] for c in cmds] == [rules.MAP_ANY4, rules.MAP_ANY6]
    assert sum(len(c["add"]["element"]["elem"]) for c in cmds) == 10_000
    assert all(e[0]["elem"]["comment"] == OWNER_A for c in cmds for e in c["add"]["element"]["elem"])


def test_publish_skips_what_nat_cannot_do() -> None:
    assert not rules.nat_capable(MAPPINGS[5])  # ::1
    assert not rules.nat_capable(MAPPINGS[6])  # cross-family
    assert rules.nat_capable(MAPPINGS[2])  # 127.0.0.1 works through route_localnet
    assert rules.publish_commands(OWNER_A, MAPPINGS[5:]) == []


def test_publish_refuses_a_binding_twice() -> None:
    with pytest.raises(BadInput, match=r"0\.0\.0\.0:8080/tcp is published twice"):
        rules.publish_commands(OWNER_A, [MAPPINGS[0], m("tcp", "0.0.0.0", 8080, "198.18.5.3", 80)])


def test_publish_refuses_port_out_of_range() -> None:
    with pytest.raises(BadInput, match="host port 0"):
        rules.publish_commands(OWNER_A, [m("tcp", "0.0.0.0", 0, "198.18.5.3", 80)])


def test_needs_relay_is_the_one_relay_decision() -> None:
    relayed = {m.docker_format() for m in MAPPINGS if rules.needs_relay(m)}
    # ::1 (never DNATed), v6 -> v4 sandbox (no NAT across families) and the :: wildcard (whose
    # socket only ever sees ::1 traffic); every other binding is kernel NAT's alone
    assert relayed == {"[::]:8080->80/tcp", "[::1]:8080->80/tcp", "[::]:8082->82/tcp"}
    assert all(rules.needs_relay(m) for m in MAPPINGS if not rules.nat_capable(m))


CNI_SUBNETS = [ipaddress.ip_network("198.18.200.0/24"), ipaddress.ip_network("2001:2:c::/64")]
CNI_MAPPINGS = [
    m("tcp", "0.0.0.0", 8080, "198.18.200.5", 80),
    m("tcp", "::", 8080, "2001:2:c::5", 80),
    m("udp", "127.0.0.1", 5353, "198.18.200.5", 53),
]


def test_bridge_masquerade_golden() -> None:
    cmds = rules.bridge_masquerade_commands(OWNER_CNI, "cni0", CNI_MAPPINGS, CNI_SUBNETS)
    golden("cni_bridge_masquerade.json", cmds)
    # per container address: host-local sources, and hairpin from its own family's subnet
    assert len(cmds) == 4
    for c in cmds:
        rule = c["add"]["rule"]
        assert rule["chain"] == rules.CHAIN_NET_POSTROUTING and rule["comment"] == OWNER_CNI
        assert (
            rule["expr"][-1] == {"masquerade": None}
            and {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}} in rule["expr"]
        )


def test_bridge_masquerade_rules_go_with_their_owner() -> None:
    long_owner = "cni:" + "a" * 200 + ":eth0"  # hashed in nft like its elements
    cmds = rules.bridge_masquerade_commands(long_owner, "cni0", CNI_MAPPINGS[:1], CNI_SUBNETS)
    assert {c["add"]["rule"]["comment"] for c in cmds} == {rules.owner_tag(long_owner)}
    with pytest.raises(BadInput, match="bridge name 'a/b'"):
        rules.bridge_masquerade_commands(OWNER_CNI, "a/b", CNI_MAPPINGS, CNI_SUBNETS)


# --- owners never touch each other ---------------------------------------------------------------


def _deleted(cmds: list[dict[str, Any]]) -> tuple[set[tuple[str, str]], set[int]]:
    keys: set[tuple[str, str]] = set()
    handles: set[int] = set()
    for c in cmds:
        body = c["delete"]
        if "element" in body:
            for k in body["element"]["elem"]:
                keys.add((body["element"]["name"], json.dumps(k)))
        else:
            handles.add(body["rule"]["handle"])
    return keys, handles


def test_unpublish_a_never_touches_b(live: dict[str, Any]) -> None:
    by_owner: dict[str, set[tuple[str, str]]] = {}
    for p in rules.published(live):
        key = [p.proto, p.host_port] if p.wildcard else [str(p.host_ip), p.proto, p.host_port]
        by_owner.setdefault(str(p.owner), set()).add((p.map, json.dumps({"concat": key})))
    for owner, other in ((OWNER_A, OWNER_CNI), (OWNER_CNI, OWNER_A)):
        keys, _ = _deleted(rules.unpublish_commands(owner, live))
        assert keys == by_owner[owner]
        assert not keys & by_owner[other]


def test_unpublish_removes_owner_rules_too(live: dict[str, Any]) -> None:
    cni_rules = {
        r["rule"]["handle"] for r in live["nftables"] if "rule" in r and r["rule"].get("comment") == OWNER_CNI
    }
    assert len(cni_rules) == 1
    _, handles = _deleted(rules.unpublish_commands(OWNER_CNI, live))
    assert handles == cni_rules
    _, handles = _deleted(rules.unpublish_commands(OWNER_A, live))
    assert handles == set()


def test_unpublish_of_unknown_owner_is_empty(live: dict[str, Any]) -> None:
    assert rules.unpublish_commands("pw:ffffffffffff", live) == []
    assert rules.unpublish_commands(OWNER_A, {}) == []


def test_remove_network_only_touches_that_network(live: dict[str, Any]) -> None:
    web_handles = {
        r["rule"]["handle"]
        for r in live["nftables"]
        if "rule" in r and r["rule"].get("comment") == "pw-net:web"
    }
    keys, handles = _deleted(rules.remove_network_commands("web", live))
    assert handles == web_handles and len(handles) == 5
    assert keys == {(rules.SET_BRIDGES, json.dumps("pwbr0"))}


# --- readers ----------------------------------------------------------------------------------------


def test_published_reads_real_listing(live: dict[str, Any]) -> None:
    got = {(p.owner, p.mapping()) for p in rules.published(live)}
    assert (OWNER_A, m("udp", "127.0.0.1", 5353, "198.18.5.2", 53)) in got
    assert (OWNER_A, m("tcp", "::", 8080, "2001:2:5::2", 80)) in got
    assert (OWNER_CNI, m("tcp", "198.18.5.1", 8081, "198.18.5.3", 81)) in got
    assert len(got) == 6


def test_owners_and_networks(live: dict[str, Any]) -> None:
    assert rules.owners(live) == {OWNER_A, OWNER_CNI}
    assert rules.networks(live) == {"web", "db"}
    assert rules.owners({}) == set() and rules.networks({}) == set()


def test_bridges_and_owner_rules(live: dict[str, Any]) -> None:
    assert rules.bridges(live) == {"pwbr0", "pwbr1"} and rules.bridges({}) == set()
    assert [r["handle"] for r in rules.owner_rules(live, OWNER_CNI)] == [37]
    assert rules.owner_rules(live, OWNER_A) == []  # elements only


def test_owners_ignore_base_and_network_rules_and_keep_hashed_ones(live: dict[str, Any]) -> None:
    extra = copy.deepcopy(live)
    hashed = rules.owner_tag("cni:" + "a" * 200 + ":eth0")
    for comment in (hashed, "pw-net:web", "pw-base: test"):
        extra["nftables"].append(
            {
                "rule": {
                    "family": "inet",
                    "table": "portwright",
                    "chain": "net-postrouting",
                    "handle": 99,
                    "comment": comment,
                    "expr": [{"accept": None}],
                }
            }
        )
    assert rules.owners(extra) == {OWNER_A, OWNER_CNI, hashed}
    assert rules.networks(extra) == {"web", "db"}


def test_conflicts_follow_bind_rules(live: dict[str, Any]) -> None:
    other = "pw:aaaaaaaaaaaa"
    # same wildcard binding as OWNER_A
    assert rules.conflicts(other, [m("tcp", "0.0.0.0", 8080, "198.18.5.9", 80)], live)[0][1] == OWNER_A
    # a specific address under OWNER_A's wildcard
    assert rules.conflicts(other, [m("tcp", "198.18.5.1", 8080, "198.18.5.9", 80)], live)[0][1] == OWNER_A
    # a wildcard over the CNI owner's specific address
    assert rules.conflicts(other, [m("tcp", "0.0.0.0", 8081, "198.18.5.9", 80)], live)[0][1] == OWNER_CNI
    # other protocol, other family, other address: free
    assert (
        rules.conflicts(
            other,
            [
                m("udp", "0.0.0.0", 8080, "198.18.5.9", 80),
                m("tcp", "2001:2:5::9", 8081, "2001:2:5::9", 80),
                m("tcp", "198.18.5.7", 8081, "198.18.5.9", 80),
            ],
            live,
        )
        == []
    )
    # an owner never conflicts with itself (re-publish is idempotent)
    assert rules.conflicts(OWNER_A, [m("tcp", "0.0.0.0", 8080, "198.18.5.2", 80)], live) == []


def test_readers_ignore_other_tables(live: dict[str, Any]) -> None:
    foreign = copy.deepcopy(live)
    for item in foreign["nftables"]:
        for body in item.values():
            if isinstance(body, dict) and "table" in body:
                body["table"] = "docker"
    assert rules.published(foreign) == [] and rules.owners(foreign) == set()
    assert rules.unpublish_commands(OWNER_A, foreign) == []


# --- tags ---------------------------------------------------------------------------------------------


def test_owner_tag_fits_nft_comment_limit() -> None:
    assert rules.owner_tag(OWNER_CNI) == OWNER_CNI  # 73 bytes: kept as is
    long_owner = "cni:" + "a" * 64 + ":" + "x" * 80
    tag = rules.owner_tag(long_owner)
    assert tag.startswith("h:") and len(tag.encode()) <= rules.MAX_COMMENT
    assert tag == rules.owner_tag(long_owner)  # deterministic
    assert tag != rules.owner_tag(long_owner + "y")


@pytest.mark.parametrize("bad", ["", "pw-net:web", "pw-base", "h:abc", "pw:\n"])
def test_owner_tag_refuses_reserved_or_empty(bad: str) -> None:
    with pytest.raises(BadInput, match="owner tag"):
        rules.owner_tag(bad)


def test_bad_bridge_name_is_refused() -> None:
    bad = Network(name="x", bridge="a-very-long-bridge-name", subnet4=WEB.subnet4, gateway4=WEB.gateway4)
    with pytest.raises(BadInput, match="bridge name 'a-very-long-bridge-name'"):
        rules.network_commands(bad)


# --- nft.py pieces that need no root -------------------------------------------------------------


def test_missing_nft_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from portwright.errors import MissingTool
    from portwright.firewall import nft

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingTool, match="apt-get install nftables"):
        nft.run(rules.base_commands())
    with pytest.raises(MissingTool, match="apt-get install conntrack"):
        nft.flush_conntrack("udp", 53)


def test_concat_maps_are_created_as_text_for_nft_1_0_6() -> None:
    # nft 1.0.6's JSON parser turns a map with an "addr . port" data type into a plain set, so
    # run() creates those maps with a text prelude; pin exactly what it sends.
    from portwright.firewall import nft

    texts = [t for t in (nft._concat_map_text(c) for c in rules.base_commands()) if t]
    assert texts == [
        "add map inet portwright pub4_addr { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service ; }",
        "add map inet portwright pub4_any { type inet_proto . inet_service : ipv4_addr . inet_service ; }",
        "add map inet portwright pub6_addr { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service ; }",
        "add map inet portwright pub6_any { type inet_proto . inet_service : ipv6_addr . inet_service ; }",
    ]
    assert all(nft._concat_map_text(c) is None for c in rules.publish_commands(OWNER_A, MAPPINGS))
