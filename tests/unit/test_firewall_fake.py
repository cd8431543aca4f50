"""The Firewall over the in-memory FakeBackend: every operation, its refusals and its atomicity, no root.

``tests/integration/test_firewall.py::test_fake_matches_the_kernel`` runs the same kind of
sequence against nftables and this fake and checks that they agree; here the fake is also held
to a real listing (``tests/golden/live_table.json``, from nft 1.0.6).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import threading
import time
from typing import Any

import pytest
from nftdata import DB, GOLDEN, WEB, m, web_firewall

from portwright.errors import BadInput, Conflict, KernelError, MissingTool, PortInUse
from portwright.firewall import rules
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend, touches

OWNER_A, OWNER_B = "pw:0123456789ab", "pw:bbbbbbbbbbbb"
OWNER_CNI = "cni:" + "f" * 64 + ":eth0"

MAPS_A = [
    m("tcp", "0.0.0.0", 8080, "198.18.5.2", 80),
    m("tcp", "::", 8080, "2001:2:5::2", 80),
    m("udp", "127.0.0.1", 5353, "198.18.5.2", 53),
]
MAPS_CNI = [
    m("tcp", "198.18.5.1", 8081, "198.18.5.3", 81),
    m("tcp", "0.0.0.0", 9090, "198.18.5.3", 90),
    m("tcp", "2001:2:5::1", 8443, "2001:2:5::3", 443),
]


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def fw(fake: FakeBackend) -> Firewall:
    return web_firewall(fake)


def published(fw: Firewall) -> set[tuple[str | None, str]]:
    return {(p.owner, p.mapping().docker_format()) for p in fw.published()}


# --- the operations ----------------------------------------------------------------------------------


def test_publish_unpublish_owners_networks(fw: Firewall, fake: FakeBackend) -> None:
    fw.publish(OWNER_A, MAPS_A)
    assert published(fw) == {(OWNER_A, x.docker_format()) for x in MAPS_A}
    assert fw.owners() == {OWNER_A} and fw.networks() == {"web"}
    fw.publish(OWNER_A, MAPS_A)  # re-publishing the same is idempotent, as in the kernel
    assert len(fw.published()) == 3
    fw.unpublish(OWNER_A)
    assert fw.published() == [] and fw.owners() == set()
    committed = len(fake.transactions)
    fw.unpublish(OWNER_A)  # nothing left: no transaction at all
    assert len(fake.transactions) == committed


def test_publish_skips_what_nat_cannot_serve(fw: Firewall, fake: FakeBackend) -> None:
    committed = len(fake.transactions)
    fw.publish(OWNER_A, [m("tcp", "::1", 8080, "2001:2:5::2", 80), m("tcp", "::", 8082, "198.18.5.2", 82)])
    assert len(fake.transactions) == committed and fw.published() == []


def test_conflict_names_the_owner_and_changes_nothing(fw: Firewall, fake: FakeBackend) -> None:
    fw.publish(OWNER_A, MAPS_A)
    before, committed = fw.table(), len(fake.transactions)
    for asked in (
        [m("tcp", "0.0.0.0", 8080, "198.18.5.9", 80)],  # the same wildcard binding
        [m("tcp", "198.18.5.1", 8080, "198.18.5.9", 80)],  # one address under A's wildcard
        [m("tcp", "::", 8080, "2001:2:5::9", 80)],
        [m("udp", "0.0.0.0", 5353, "198.18.5.9", 53)],
    ):  # a wildcard over A's 127.0.0.1
        with pytest.raises(PortInUse, match=OWNER_A):
            fw.publish(OWNER_B, asked)
    assert fw.table() == before and len(fake.transactions) == committed
    fw.publish(OWNER_B, [m("udp", "0.0.0.0", 8080, "198.18.5.9", 80)])  # other protocol: free
    assert fw.owners() == {OWNER_A, OWNER_B}


def test_remove_table_refused_while_anything_remains(fw: Firewall) -> None:
    fw.publish(OWNER_A, MAPS_A)
    with pytest.raises(Conflict, match=f"still holds {OWNER_A}, network web"):
        fw.remove_table()
    fw.unpublish(OWNER_A)
    with pytest.raises(Conflict, match="network web"):
        fw.remove_table()
    fw.remove_network("web")
    fw.remove_network("web")  # a no-op now
    assert fw.networks() == set()
    fw.remove_table()
    assert fw.table() == {}
    fw.remove_table()  # nothing to remove


def test_remove_table_force(fw: Firewall) -> None:
    fw.publish(OWNER_A, MAPS_A)
    fw.remove_table(force=True)
    assert fw.table() == {} and fw.owners() == set()


def test_networks_replace_their_rules_and_leave_others(fw: Firewall) -> None:
    fw.add_network(DB)
    web_rules = [r for r in _rules(fw.table()) if r["comment"] == "pw-net:web"]
    fw.add_network(WEB)  # re-adding replaces, never duplicates
    assert len([r for r in _rules(fw.table()) if r["comment"] == "pw-net:web"]) == len(web_rules)
    fw.remove_network("web")
    assert fw.networks() == {"db"} and rules.bridges(fw.table()) == {"pwbr1"}


def test_publish_on_an_empty_host_creates_the_base(fake: FakeBackend) -> None:
    fw = Firewall(fake)
    fw.publish(OWNER_A, MAPS_A[:1])
    assert len(fake.transactions) == 1 and fw.owners() == {OWNER_A}
    assert {c["name"] for c in _objects(fw.table(), "chain")} >= set(rules.FIXED_CHAINS)


def test_add_network_on_an_empty_host_creates_the_base(fake: FakeBackend) -> None:
    fw = Firewall(fake)
    fw.add_network(WEB)
    assert fw.networks() == {"web"} and len(fake.transactions) == 1


def test_ensure_base_keeps_elements_and_networks(fw: Firewall) -> None:
    fw.publish(OWNER_A, MAPS_A)
    before = published(fw)
    fw.ensure_base()
    assert published(fw) == before and fw.networks() == {"web"}
    base = [r["comment"] for r in _rules(fw.table()) if r["comment"].startswith(rules.BASE_TAG)]
    assert len(base) == len([c for c in rules.base_commands() if "rule" in c.get("add", {})])


# --- order of the kernel calls ---------------------------------------------------------------------


def test_publish_reads_and_writes_under_the_lock_then_flushes_udp(fw: Firewall, fake: FakeBackend) -> None:
    fake.calls.clear()
    fw.publish(OWNER_A, MAPS_A)
    assert fake.calls == ["lock", "read", "apply", "unlock", "conntrack udp 5353"]
    assert fake.conntrack_ports == [("udp", (5353,))]
    fake.calls.clear()
    fw.unpublish(OWNER_A)
    assert fake.calls == ["lock", "read", "apply", "unlock"]
    fw.publish(OWNER_A, MAPS_A, flush_udp=False)
    assert fake.conntrack_ports == [("udp", (5353,))]  # not again


def test_publish_without_conntrack_refuses_before_changing_anything(fw: Firewall, fake: FakeBackend) -> None:
    fake.conntrack_tool = False
    before = fw.table()
    with pytest.raises(MissingTool, match="apt-get install conntrack"):
        fw.publish(OWNER_A, MAPS_A)
    assert fw.table() == before
    fw.publish(OWNER_A, MAPS_A[:2])  # TCP needs no flush
    fw.publish(OWNER_B, [m("udp", "0.0.0.0", 5354, "198.18.5.2", 53)], flush_udp=False)
    assert fw.owners() == {OWNER_A, OWNER_B}


def test_teardown_helpers_are_recorded(fw: Firewall, fake: FakeBackend) -> None:
    fw.flush_conntrack_addrs(["198.18.5.2", "2001:2:5::2"])
    fw.sync_docker_user(["pwbr1", "pwbr0", "pwbr0"])
    fw.flush_conntrack_ports("udp", [53, 54])
    assert fake.conntrack_addrs == [("198.18.5.2", "2001:2:5::2")]
    assert fake.docker_user == ["pwbr0", "pwbr1"] and fake.conntrack_ports == [("udp", (53, 54))]


# --- atomicity ------------------------------------------------------------------------------------------


def test_injected_failure_changes_nothing(fw: Firewall, fake: FakeBackend) -> None:
    fw.publish(OWNER_A, MAPS_A[:1])
    before, committed = fw.table(), len(fake.transactions)
    fake.fail_next(touches("element", "add"))
    with pytest.raises(KernelError, match="nft -j -f - failed: injected failure"):
        fw.publish(OWNER_B, [m("tcp", "0.0.0.0", 9000 + i, "198.18.5.4", 80) for i in range(50)])
    assert fw.table() == before and len(fake.transactions) == committed and len(fake.rejected) == 1
    fw.publish(OWNER_B, [m("tcp", "0.0.0.0", 9000, "198.18.5.4", 80)])  # armed once only
    assert fw.owners() == {OWNER_A, OWNER_B}


def test_a_refused_command_undoes_the_whole_batch(fw: Firewall, fake: FakeBackend) -> None:
    fw.publish(OWNER_A, [m("tcp", "0.0.0.0", 8680, "198.18.5.2", 80)])
    before = fw.table()
    # as in the kernel test: the same key with another target is refused (EEXIST), and the
    # batch's other element must not appear either
    cmds = rules.publish_commands(
        OWNER_A, [m("tcp", "0.0.0.0", 8681, "198.18.5.2", 80), m("tcp", "0.0.0.0", 8680, "198.18.5.2", 81)]
    )
    with pytest.raises(KernelError, match="File exists"):
        fake.apply(cmds)
    assert fw.table() == before


def test_fail_next_counts_applies(fw: Firewall, fake: FakeBackend) -> None:
    fake.fail_next(2)
    fw.publish(OWNER_A, MAPS_A[:1])
    with pytest.raises(KernelError):
        fw.publish(OWNER_B, [m("tcp", "0.0.0.0", 9000, "198.18.5.4", 80)])
    fw.publish(OWNER_B, [m("tcp", "0.0.0.0", 9000, "198.18.5.4", 80)])
    assert fw.owners() == {OWNER_A, OWNER_B}
    with pytest.raises(ValueError):
        fake.fail_next(0)


# --- owner rules (the CNI plugin's masquerade on foreign bridges) -----------------------------------


def test_extra_rules_go_in_with_the_elements_and_out_with_unpublish(fw: Firewall, fake: FakeBackend) -> None:
    subnets = [ipaddress.ip_network("198.18.200.0/24")]
    maps = [m("tcp", "0.0.0.0", 8080, "198.18.200.5", 80)]
    extra = rules.bridge_masquerade_commands(OWNER_CNI, "cni0", maps, subnets)
    committed = len(fake.transactions)
    fw.publish(OWNER_CNI, maps, extra_rules=extra)
    assert len(fake.transactions) == committed + 1  # one transaction for elements and rules
    assert [r["expr"] for r in rules.owner_rules(fw.table(), OWNER_CNI)] == [
        c["add"]["rule"]["expr"] for c in extra
    ]
    fw.publish(OWNER_CNI, maps, extra_rules=extra)  # again: replaced, not doubled
    assert len(rules.owner_rules(fw.table(), OWNER_CNI)) == len(extra) == 2
    fw.unpublish(OWNER_CNI)
    assert rules.owner_rules(fw.table(), OWNER_CNI) == [] and fw.owners() == set()


def test_extra_rules_must_carry_the_owner_tag(fw: Firewall) -> None:
    extra = rules.bridge_masquerade_commands(OWNER_CNI, "cni0", MAPS_A[:1], [])
    with pytest.raises(BadInput, match="tagged 'pw:0123456789ab'"):
        fw.publish(OWNER_A, MAPS_A[:1], extra_rules=extra)
    with pytest.raises(BadInput, match="extra firewall rule"):
        fw.publish(
            OWNER_A, MAPS_A[:1], extra_rules=[{"delete": {"table": {"family": "inet", "name": "portwright"}}}]
        )
    assert fw.owners() == set()


# --- the lock ------------------------------------------------------------------------------------------


class RacingFake(FakeBackend):
    """Runs ``action`` in another thread right after the main thread's first read, and lets it
    get as far as it can (to its end, or waiting for the table lock) before the main thread
    goes on: the issue 18 race, without root."""

    def __init__(self) -> None:
        super().__init__()
        self.action: Any = None
        self.result: dict[str, Any] = {}
        self.main = threading.get_ident()

    def read(self) -> dict[str, Any]:
        table = super().read()
        if self.action is not None and threading.get_ident() == self.main and "thread" not in self.result:
            t = threading.Thread(target=self._race)
            self.result["thread"] = t
            t.start()
            deadline = time.monotonic() + 30
            while t.is_alive() and t.ident not in self.waiting:
                assert time.monotonic() < deadline, (
                    "the racing thread neither finished nor waited for the lock"
                )
                time.sleep(0.001)
            self.result["state"] = "waiting" if t.is_alive() else "done"
        return table

    def _race(self) -> None:
        try:
            self.action()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            self.result["error"] = e


def test_unpublish_never_deletes_an_element_another_owner_published_meanwhile() -> None:
    fake = RacingFake()
    fw = Firewall(fake)
    fw.publish(OWNER_A, [m("tcp", "0.0.0.0", 18080, "198.18.250.2", 80)], flush_udp=False)

    def other_process() -> None:
        fw.unpublish(OWNER_A)
        fw.publish(OWNER_B, [m("tcp", "0.0.0.0", 18080, "198.18.250.3", 80)], flush_udp=False)

    fake.action = other_process
    fw.unpublish(OWNER_A)
    fake.result["thread"].join(timeout=30)
    assert "error" not in fake.result, fake.result.get("error")
    assert published(fw) == {(OWNER_B, "0.0.0.0:18080->80/tcp")}
    assert fake.result["state"] == "waiting"


def test_concurrent_removal_of_one_network_is_not_an_error() -> None:
    """remove_network deletes rules by the handles it read: two at once (network rm racing a
    reconcile) must not make the second delete handles the first already removed."""
    fake = RacingFake()
    fw = Firewall(fake)
    fw.add_network(WEB)
    fw.add_network(DB)
    fake.action = lambda: fw.remove_network("web")
    fw.remove_network("web")
    fake.result["thread"].join(timeout=30)
    assert "error" not in fake.result, fake.result.get("error")
    assert fw.networks() == {"db"} and fake.result["state"] == "waiting"


def test_concurrent_add_of_one_network_leaves_one_set_of_rules() -> None:
    fake = RacingFake()
    fw = Firewall(fake)
    fw.add_network(WEB)
    fake.action = lambda: fw.add_network(WEB)
    fw.add_network(WEB)  # replaces the rules it read, while the other one waits to do the same
    fake.result["thread"].join(timeout=30)
    assert "error" not in fake.result, fake.result.get("error")
    tagged = [r for r in _rules(fw.table()) if r["comment"] == "pw-net:web"]
    assert len(tagged) == len([c for c in rules.network_commands(WEB) if "rule" in c["add"]])


def test_the_lock_is_not_reentrant(fake: FakeBackend) -> None:
    with fake.lock(), pytest.raises(RuntimeError, match="not re-entrant"), fake.lock():
        pass


# --- the fake refuses what the kernel refuses -----------------------------------------------------

T = {"family": "inet", "table": "portwright"}


@pytest.mark.parametrize(
    "cmd,err",
    [
        (
            {"delete": {"element": {**T, "name": rules.MAP_ANY4, "elem": [{"concat": ["tcp", 1]}]}}},
            "No such file",
        ),
        ({"create": {"table": {"family": "inet", "name": "portwright"}}}, "File exists"),
        ({"delete": {"chain": {**T, "name": rules.CHAIN_PUBLISH}}}, "busy"),  # prerouting jumps to it
        ({"delete": {"set": {**T, "name": rules.SET_BRIDGES}}}, "busy"),  # rules look it up
        ({"add": {"rule": {**T, "chain": "nope", "expr": [{"accept": None}]}}}, "No such file"),
        ({"delete": {"rule": {**T, "chain": rules.CHAIN_GUARD, "handle": 99999}}}, "No such file"),
        ({"add": {"element": {**T, "name": "nope", "elem": ["x"]}}}, "No such file"),
        ({"delete": {"table": {"family": "ip", "name": "portwright"}}}, "No such file"),
        ({"frobnicate": {"table": {"family": "inet", "name": "portwright"}}}, "not supported"),
    ],
)
def test_refusals(fw: Firewall, fake: FakeBackend, cmd: dict[str, Any], err: str) -> None:
    before = fw.table()
    with pytest.raises(KernelError, match=err):
        fake.apply([{"add": {"element": {**T, "name": rules.SET_BRIDGES, "elem": ["x0"]}}}, cmd])
    assert fw.table() == before


def test_chain_and_rule_handles(fw: Firewall, fake: FakeBackend) -> None:
    fake.apply(
        [
            {"add": {"chain": {**T, "name": "extra"}}},
            {"add": {"rule": {**T, "chain": "extra", "expr": [{"accept": None}], "comment": "b"}}},
            {"insert": {"rule": {**T, "chain": "extra", "expr": [{"drop": None}], "comment": "a"}}},
        ]
    )
    listed = [r for r in _rules(fw.table()) if r["chain"] == "extra"]
    assert [r["comment"] for r in listed] == ["a", "b"] and listed[0]["handle"] > listed[1]["handle"]
    fake.apply(
        [
            {"delete": {"rule": {**T, "chain": "extra", "handle": listed[0]["handle"]}}},
            {"delete": {"chain": {**T, "name": "extra"}}},
        ]
    )  # a chain nobody jumps to goes, rules and all
    assert "extra" not in {c["name"] for c in _objects(fw.table(), "chain")}


def test_re_adding_an_element_keeps_its_first_comment(fw: Firewall, fake: FakeBackend) -> None:
    fw.publish(OWNER_A, MAPS_A[:1])
    fake.apply(rules.publish_commands(OWNER_B, MAPS_A[:1]))  # same key, same value: a no-op in nft
    assert fw.owners() == {OWNER_A}


# --- the fake's listing reads like the kernel's -------------------------------------------------


def test_listing_matches_a_real_nft_listing() -> None:
    """The same state as the real listing in tests/golden/live_table.json reads back the same."""
    live: dict[str, Any] = json.loads((GOLDEN / "live_table.json").read_text())
    cni_rule = next(i["rule"] for i in live["nftables"] if "rule" in i and i["rule"]["comment"] == OWNER_CNI)
    fw = web_firewall(FakeBackend())
    fw.add_network(DB)
    fw.publish(OWNER_A, MAPS_A, flush_udp=False)
    fw.publish(
        OWNER_CNI,
        MAPS_CNI,
        extra_rules=[
            {
                "add": {
                    "rule": {**T, "chain": cni_rule["chain"], "expr": cni_rule["expr"], "comment": OWNER_CNI}
                }
            }
        ],
    )
    got = fw.table()
    assert {(p.owner, p.mapping()) for p in rules.published(got)} == {
        (p.owner, p.mapping()) for p in rules.published(live)
    }
    assert rules.owners(got) == rules.owners(live) and rules.networks(got) == rules.networks(live)
    assert rules.bridges(got) == rules.bridges(live)
    assert _shape(got) == _shape(live)
    assert rules.unpublish_commands(OWNER_CNI, got) == _without_handles(
        rules.unpublish_commands(OWNER_CNI, live), got, OWNER_CNI
    )


def _objects(table: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [i[kind] for i in table.get("nftables", []) if kind in i]


def _rules(table: dict[str, Any]) -> list[dict[str, Any]]:
    return _objects(table, "rule")


def _shape(table: dict[str, Any]) -> dict[str, Any]:
    """What must agree between two listings: objects and their types, elements, tagged rules."""
    strip = ("handle", "elem")
    shape: dict[str, Any] = {}
    for kind in ("table", "chain", "set", "map"):
        shape[kind] = sorted(
            json.dumps({k: v for k, v in o.items() if k not in strip}, sort_keys=True)
            for o in _objects(table, kind)
        )
    shape["elements"] = sorted(
        json.dumps(e, sort_keys=True)
        for kind in ("set", "map")
        for o in _objects(table, kind)
        for e in o.get("elem", [])
    )
    # which chains hold whose rules (the golden listing predates the IPv6 hairpin rule, so not how many)
    shape["rules"] = {(r["chain"], r.get("comment")) for r in _rules(table)}
    return shape


def _without_handles(cmds: list[dict[str, Any]], got: dict[str, Any], owner: str) -> list[dict[str, Any]]:
    """``cmds`` with the live listing's rule handles replaced by the fake's for the same rules."""
    out = copy.deepcopy(cmds)
    handles = iter(r["handle"] for r in rules.owner_rules(got, owner))
    for c in out:
        if "rule" in c["delete"]:
            c["delete"]["rule"]["handle"] = next(handles)
    return out
