"""firewall.antispoof (pure) and the Firewall's anti-spoofing operations over the fake backend."""

from __future__ import annotations

import ipaddress
import json

import pytest

from portwright.errors import BadInput
from portwright.firewall import antispoof as a
from portwright.firewall.fake import FakeBackend
from portwright.firewall.ops import Firewall
from portwright.model import Sandbox

MAC = "02:42:c6:12:00:02"


def sb(sid: str = "aaaaaaaaaaaa", veth: str = "pwvaaaaaaaaaaa", last: int = 2) -> Sandbox:
    return Sandbox(
        id=sid,
        name="s" + sid[:4],
        network="pw0",
        netns="/run/netns/pw-x",
        veth=veth,
        ip4=ipaddress.IPv4Address(f"198.18.0.{last}"),
        ip6=ipaddress.IPv6Address(f"2001:2::{last}"),
        mac=f"02:42:c6:12:00:{last:02x}",
    )


def test_link_local_is_the_kernels_eui64() -> None:
    assert a.link_local(MAC) == ipaddress.IPv6Address("fe80::42:c6ff:fe12:2")


def test_elements_cover_mac_addresses_link_local_dad_and_nd_targets() -> None:
    port = a.port_for(sb())
    assert port is not None
    el = a.elements(port)
    assert el[a.SET_PORTS] == ["pwvaaaaaaaaaaa"]
    assert el[a.SET_ALLOW4] == [{"concat": ["pwvaaaaaaaaaaa", MAC, "198.18.0.2"]}]
    assert el[a.SET_ARP] == [{"concat": ["pwvaaaaaaaaaaa", MAC, MAC, "198.18.0.2"]}]
    v6 = [k["concat"][2] for k in el[a.SET_ALLOW6]]
    assert v6 == ["2001:2::2", "fe80::42:c6ff:fe12:2", "::"]
    assert all(k["concat"][1] == MAC for k in el[a.SET_ALLOW6])
    nd = [k["concat"][1] for k in el[a.SET_ND]]
    assert nd == ["0x20010002000000000000000000000002", "0xfe800000000000000042c6fffe120002"]  # never ::


def test_no_port_without_a_veth_and_bad_ports_refused() -> None:
    host = Sandbox(id="b" * 12, name="h", network="host", netns=None, veth=None)
    assert a.port_for(host) is None
    with pytest.raises(BadInput, match="not a unicast MAC"):
        a.Port("pw:x", "pwvx", "03:00:00:00:00:01", None, None)
    with pytest.raises(BadInput, match="ifname"):
        a.Port("pw:x", "a" * 16, MAC, None, None)


def test_base_is_one_jump_and_set_lookups_in_the_bridge_family() -> None:
    cmds = a.base_commands()
    assert all(
        body.get("family") == "bridge"
        for c in cmds
        for v in c.values()
        for body in v.values()
        if "family" in body
    )
    chain = next(
        c["add"]["chain"] for c in cmds if "chain" in c.get("add", {}) and "hook" in c["add"]["chain"]
    )
    assert (chain["hook"], chain["prio"], chain["policy"]) == ("prerouting", a.PRIO, "accept")
    text = json.dumps([c for c in cmds if "rule" in c.get("add", {})])
    for s in a.SETS:
        assert f'"@{s}"' in text
    assert all("pw-base: anti-spoofing" in c["add"]["rule"]["comment"] for c in a.BASE_RULES)


def test_firewall_ensure_is_idempotent_tagged_and_removed_by_owner() -> None:
    backend = FakeBackend()
    fw = Firewall(backend)
    one, two = sb(), sb("bbbbbbbbbbbb", "pwvbbbbbbbbbbb", 3)
    assert fw.ensure_antispoof(one)[0] == "table bridge portwright_antispoof"
    n = len(backend.transactions)
    assert fw.ensure_antispoof(one) == [] and len(backend.transactions) == n  # whole: no write
    fw.ensure_antispoof(two)
    assert fw.antispoof_ports() == {"pwvaaaaaaaaaaa": "pw:aaaaaaaaaaaa", "pwvbbbbbbbbbbb": "pw:bbbbbbbbbbbb"}
    fw.remove_antispoof("pw:aaaaaaaaaaaa")
    assert fw.antispoof_owners() == {"pw:bbbbbbbbbbbb"}
    fw.remove_antispoof("pw:aaaaaaaaaaaa")  # idempotent
    table = backend.dump("bridge", "portwright_antispoof")
    assert "pwvaaaaaaaaaaa" not in json.dumps(table)


def test_ensure_puts_back_a_flushed_table_and_a_flushed_chain() -> None:
    backend = FakeBackend()
    fw = Firewall(backend)
    fw.ensure_antispoof(sb())
    backend.apply(
        [{"delete": {"table": {"family": "bridge", "name": "portwright_antispoof"}}}]
    )  # nft flush ruleset
    assert "table bridge portwright_antispoof" in fw.ensure_antispoof(sb())
    assert fw.antispoof_owners() == {"pw:aaaaaaaaaaaa"}
    backend.apply(
        [{"flush": {"chain": {"family": "bridge", "table": "portwright_antispoof", "name": a.CHAIN_CHECK}}}]
    )
    assert fw.ensure_antispoof(sb()) == ["rules"]
    rules = [r for r in a.BASE_RULES if r["add"]["rule"]["chain"] == a.CHAIN_CHECK]
    assert [r["add"]["rule"]["expr"][-1] for r in rules] == [{"accept": None}, {"drop": None}] + [
        {"accept": None}
    ] * 2 + [{"drop": None}]  # v4 accept, NA target drop, v6 and ARP accept, the rest dropped
    assert a.missing(a.port_for(sb()), backend.dump("bridge", "portwright_antispoof")) == []  # type: ignore[arg-type]


def test_missing_names_lost_elements() -> None:
    backend = FakeBackend()
    fw = Firewall(backend)
    fw.ensure_antispoof(sb())
    port = a.port_for(sb())
    assert port is not None
    backend.apply(
        [
            {
                "delete": {
                    "element": {
                        "family": "bridge",
                        "table": "portwright_antispoof",
                        "name": a.SET_ALLOW4,
                        "elem": [{"concat": ["pwvaaaaaaaaaaa", MAC, "198.18.0.2"]}],
                    }
                }
            }
        ]
    )
    assert a.missing(port, backend.dump("bridge", "portwright_antispoof")) == [
        f"allow4 pwvaaaaaaaaaaa . {MAC} . 198.18.0.2"
    ]
    assert fw.ensure_antispoof(sb()) == [f"allow4 pwvaaaaaaaaaaa . {MAC} . 198.18.0.2"]


def test_nft_creates_the_typeof_set_from_text_and_the_rest_from_json() -> None:
    from portwright.firewall import nft

    texts = [nft._prelude_text(c) for c in a.base_commands()]
    pre = [t for t in texts if t]
    assert pre == [
        (
            "bridge",
            "portwright_antispoof",
            "add set bridge portwright_antispoof port_nd { typeof iifname . @th,64,128 ; }",
        )
    ]


# --- the table goes with the last protected port --------------------------------------------------

DELETE_TABLE = {"delete": {"table": {"family": a.FAMILY, "name": a.TABLE}}}


def test_the_last_owner_out_deletes_the_table_and_the_next_sandbox_recreates_it() -> None:
    backend = FakeBackend()
    fw = Firewall(backend)
    one, two = sb(), sb("bbbbbbbbbbbb", "pwvbbbbbbbbbbb", 3)
    fw.ensure_antispoof(one)
    fw.ensure_antispoof(two)
    fw.remove_antispoof("pw:aaaaaaaaaaaa")
    assert backend.dump(a.FAMILY, a.TABLE) != {}  # still protecting two
    fw.remove_antispoof("pw:bbbbbbbbbbbb")
    assert backend.dump(a.FAMILY, a.TABLE) == {}  # no empty table (and base chain) left behind
    fw.remove_antispoof("pw:bbbbbbbbbbbb")  # idempotent on an absent table
    assert fw.ensure_antispoof(one)[0] == "table bridge portwright_antispoof"
    assert fw.antispoof_owners() == {"pw:aaaaaaaaaaaa"}


def test_remove_commands_delete_an_already_empty_table_but_never_an_absent_one() -> None:
    backend = FakeBackend()
    backend.apply(a.base_commands())  # left empty by an earlier version
    empty = backend.dump(a.FAMILY, a.TABLE)
    assert a.remove_commands("pw:aaaaaaaaaaaa", empty) == [DELETE_TABLE]
    assert a.remove_commands("pw:aaaaaaaaaaaa", {}) == []
    assert a.delete_if_unused(empty) == [DELETE_TABLE] and a.delete_if_unused({}) == []


def test_an_element_of_another_owner_or_untagged_keeps_the_table() -> None:
    backend = FakeBackend()
    fw = Firewall(backend)
    fw.ensure_antispoof(sb())
    backend.apply(
        [
            {
                "add": {
                    "element": {
                        "family": a.FAMILY,
                        "table": a.TABLE,
                        "name": a.SET_PORTS,
                        "elem": ["pwvhandmade"],
                    }
                }
            }
        ]
    )
    cmds = a.remove_commands("pw:aaaaaaaaaaaa", backend.dump(a.FAMILY, a.TABLE))
    assert cmds and DELETE_TABLE not in cmds
    assert a.delete_if_unused(backend.dump(a.FAMILY, a.TABLE)) == []
    fw.remove_antispoof("pw:aaaaaaaaaaaa")
    assert a.ports(backend.dump(a.FAMILY, a.TABLE)) == {"pwvhandmade": ""}
