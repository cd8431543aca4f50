"""The verified record (firewall/verified.py): restore skips its read of the table only when the
ruleset generation says nothing was committed since the table was seen whole, and never vouches
for something that is not there (#11). Pure logic, then the Firewall over the fake backend,
whose generation counts its committed batches."""

from __future__ import annotations

import ipaddress
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from nftdata import WEB

from portwright.errors import KernelError
from portwright.firewall import health, rules, verified
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend
from portwright.firewall.memofile import MemoFile
from portwright.model import ANY4, ANY6, Mapping, Network

NET = WEB  # nftdata's network: its subnets hold the addresses below
IP4 = ipaddress.IPv4Address("198.18.5.2")
IP6 = ipaddress.IPv6Address("2001:2:5::2")


def maps(first: int, n: int, ip4: ipaddress.IPv4Address = IP4) -> tuple[Mapping, ...]:
    out: list[Mapping] = []
    for p in range(first, first + n):
        out += [Mapping("tcp", ANY4, p, ip4, 80), Mapping("tcp", ANY6, p, IP6, 80)]
    return tuple(out)


# --- pure ------------------------------------------------------------------------------------


def test_the_digest_ignores_order_and_what_nat_cannot_serve() -> None:
    m = maps(8000, 3)
    relay_only = Mapping("tcp", ipaddress.IPv6Address("::1"), 8000, IP4, 80)
    assert verified.pub_digest(m) == verified.pub_digest(list(reversed(m)))
    assert verified.pub_digest([*m, relay_only]) == verified.pub_digest(m)
    assert verified.pub_digest(m) != verified.pub_digest(m[:-1])
    other_target = maps(8000, 3, ipaddress.IPv4Address("198.18.5.3"))
    assert verified.pub_digest(m) != verified.pub_digest(other_target)


def test_a_tuple_digest_is_remembered_by_identity_and_still_right() -> None:
    m = maps(9000, 2)
    first = verified.pub_digest(m)
    assert verified.pub_digest(m) == first
    equal_copy = tuple(list(m))  # another object, the same content: the same digest
    assert verified.pub_digest(equal_copy) == first


def test_covers_needs_the_same_place_the_base_and_every_fact() -> None:
    v = verified.whole((7, 100), [NET], [("pw:a", maps(8000, 2))])
    assert verified.covers(v, (7, 100), [NET], [("pw:a", maps(8000, 2))])
    assert verified.covers(v, (7, 100), [], [])  # less than was seen is still covered
    assert not verified.covers(v, (7, 101), [NET], [])  # something was committed since
    assert not verified.covers(v, (8, 100), [NET], [])  # another namespace at the same number
    assert not verified.covers(v, None, [NET], [])
    assert not verified.covers(None, (7, 100), [], [])
    assert not verified.covers(v, (7, 100), [NET], [("pw:a", maps(8000, 3))])  # other mappings
    assert not verified.covers(v, (7, 100), [NET], [("pw:b", maps(8000, 2))])
    renamed = Network(**{**{f: getattr(NET, f) for f in NET.__dataclass_fields__}, "bridge": "pwbr9"})
    assert not verified.covers(v, (7, 100), [renamed], [])
    assert not verified.covers(verified.Verified((7, 100)), (7, 100), [], [])  # no base


def test_only_our_own_commits_carry_a_record_forward() -> None:
    assert verified.advanced((3, 10), 1, (3, 11))
    assert verified.advanced((3, 10), 2, (3, 12))  # nft's map prelude and the batch
    assert not verified.advanced((3, 10), 1, (3, 12))  # someone else committed too
    assert not verified.advanced((3, 10), 1, (4, 11))
    assert not verified.advanced((3, 10), 1, None)
    assert verified.advanced((3, verified.GEN_MODULUS - 1), 1, (3, 0))


def test_each_transaction_changes_the_facts_it_touches() -> None:
    v = verified.Verified((1, 5), base=True)
    v = verified.with_publication(v, "pw:a", maps(8000, 1), base_added=False)
    v = verified.with_network(v, NET, base_added=False)
    assert set(v.pubs) == {"pw:a"} and set(v.nets.values()) == {"web"}
    assert verified.without_owner(v, "pw:a").pubs == {}
    assert verified.without_network(v, "web").nets == {}
    again = verified.with_network(v, NET, base_added=False)
    assert list(again.nets.values()) == ["web"]  # replaced, not added twice
    assert verified.with_publication(verified.Verified((1, 5)), "pw:b", (), base_added=True).base


def test_a_record_survives_the_file_and_a_damaged_one_is_ignored(tmp_path: Path) -> None:
    memo = MemoFile(str(tmp_path / "fw-verified.json"))
    assert memo.load() is None
    v = verified.whole((3, 9), [NET], [("pw:a", maps(8000, 2))])
    memo.save(v)
    assert memo.load() == v
    for bad in ("{", "[]", json.dumps({"cookie": 3}), json.dumps({**verified.to_json(v), "base": "yes"})):
        (tmp_path / "fw-verified.json").write_text(bad)
        assert memo.load() is None
    memo.save(None)
    assert not (tmp_path / "fw-verified.json").exists()


# --- the Firewall over the fake backend --------------------------------------------------------


@pytest.fixture
def fw(tmp_path: Path) -> tuple[Firewall, FakeBackend]:
    backend = FakeBackend()
    return Firewall(backend, MemoFile(str(tmp_path / "fw-verified.json"))), backend


def _pubs(*owners: tuple[str, tuple[Mapping, ...]]) -> list[tuple[str, tuple[Mapping, ...], object]]:
    return [(o, m, lambda: True) for o, m in owners]


def test_a_whole_table_is_read_once_then_not_again_until_someone_commits(
    fw: tuple[Firewall, FakeBackend],
) -> None:
    f, backend = fw
    f.add_network(NET)
    f.publish("pw:a", maps(8000, 50))
    del backend.calls[:]
    pubs = _pubs(("pw:a", maps(8000, 50)))
    assert f.ensure_all([NET], pubs) == []  # type: ignore[arg-type]
    assert backend.calls.count("read") == 1  # the first check reads and records
    del backend.calls[:]
    assert f.ensure_all([NET], pubs) == []  # type: ignore[arg-type]
    assert backend.calls.count("read") == 0 and backend.calls.count("lock") == 0
    backend.apply([{"add": {"table": {"family": "inet", "name": "someone_else"}}}])  # a foreign commit
    del backend.calls[:]
    assert f.ensure_all([NET], pubs) == []  # type: ignore[arg-type]
    assert backend.calls.count("read") == 1


def test_our_own_publish_and_unpublish_keep_the_record_current(fw: tuple[Firewall, FakeBackend]) -> None:
    f, backend = fw
    f.add_network(NET)
    f.ensure_all([NET], [])  # seen whole: recorded
    f.publish("pw:a", maps(8000, 20))
    f.publish("pw:b", maps(9000, 20, ipaddress.IPv4Address("198.18.5.3")))
    f.unpublish("pw:a", known=list(maps(8000, 20)))
    del backend.calls[:]
    b = maps(9000, 20, ipaddress.IPv4Address("198.18.5.3"))
    assert f.ensure_all([NET], _pubs(("pw:b", b))) == []  # type: ignore[arg-type]
    assert "read" not in backend.calls
    # pw:a's elements are gone, so the record must not vouch for them: asking reads, and repairs.
    repaired = dict(f.ensure_all([NET], _pubs(("pw:a", maps(8000, 20)))))  # type: ignore[arg-type]
    assert set(repaired) == {"pw:a"} and "read" in backend.calls


def test_a_foreign_commit_inside_our_transaction_stops_the_record(tmp_path: Path) -> None:
    class Racing(FakeBackend):
        race = False

        def apply(self, cmds: list[dict[str, object]]) -> int:
            if self.race:
                self.race = False
                super().apply([{"add": {"table": {"family": "inet", "name": "racer"}}}])
            return super().apply(cmds)

    backend = Racing()
    f = Firewall(backend, MemoFile(str(tmp_path / "m.json")))
    f.add_network(NET)
    f.ensure_all([NET], [])
    backend.race = True
    f.publish("pw:a", maps(8000, 5))  # generation moved by 2 for our 1 commit: not carried forward
    del backend.calls[:]
    f.ensure_all([NET], _pubs(("pw:a", maps(8000, 5))))  # type: ignore[arg-type]
    assert backend.calls.count("read") == 1


def test_recorded_mappings_go_by_key_only_while_vouched_for(fw: tuple[Firewall, FakeBackend]) -> None:
    f, backend = fw
    f.add_network(NET)
    m = maps(8000, 30)
    f.publish("pw:a", m)
    f.ensure_all([NET], _pubs(("pw:a", m)))  # type: ignore[arg-type]
    del backend.calls[:]
    f.unpublish("pw:a", recorded=m)  # a dead supervisor's sandbox: no read of the table
    assert "read" not in backend.calls
    assert rules.published(backend.read()) == []
    f.publish("pw:b", m)
    backend.apply([{"add": {"table": {"family": "inet", "name": "someone_else"}}}])
    del backend.calls[:]
    f.unpublish("pw:b", recorded=m)  # not vouched for any more: decided from the table
    assert "read" in backend.calls and rules.published(backend.read()) == []


def test_an_unknown_generation_always_reads(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.generation_known = False
    f = Firewall(backend, MemoFile(str(tmp_path / "m.json")))
    f.add_network(NET)
    for _ in range(3):
        del backend.calls[:]
        f.ensure_all([NET], [])
        assert backend.calls.count("read") == 1
    assert not (tmp_path / "m.json").exists()


def test_seeded_random_operations_never_let_a_missing_element_pass(tmp_path: Path) -> None:
    """Random publishes, unpublishes (by key and by tag), foreign deletes of elements and of the
    whole table, and restores; after each restore the table must really hold every wanted
    owner's elements, whatever the record said."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rnd = random.Random(seed)
    backend = FakeBackend()
    f = Firewall(backend, MemoFile(str(tmp_path / "m.json")))
    f.add_network(NET)
    owners = {
        f"pw:{k}": maps(10000 + 100 * k, 5, ipaddress.IPv4Address(f"198.18.5.{10 + k}")) for k in range(6)
    }
    live: set[str] = set()
    reads = Counter[str]()
    for step in range(300):
        op = rnd.choice(["publish", "unpublish", "unpublish_recorded", "foreign_elem", "flush", "restore"])
        o = rnd.choice(sorted(owners))
        if op == "publish" and o not in live:
            f.publish(o, owners[o], flush_udp=False)
            live.add(o)
        elif op in ("unpublish", "unpublish_recorded") and o in live:
            if op == "unpublish":
                f.unpublish(o)
            else:
                f.unpublish(o, recorded=owners[o])
            live.discard(o)
        elif op == "foreign_elem" and live:
            victim = rnd.choice(sorted(live))
            try:
                backend.apply(rules.delete_elements_commands(owners[victim][:2]))
            except KernelError:
                pass  # already gone
        elif op == "flush":
            if backend.read():
                backend.apply(rules.table_commands_delete())
        else:
            before = backend.calls.count("read")
            f.ensure_all([NET], _pubs(*((o2, owners[o2]) for o2 in sorted(live))))  # type: ignore[arg-type]
            reads["read" if backend.calls.count("read") > before else "skipped"] += 1
            table = backend.read()
            assert health.missing_base(table) == [], f"seed {seed} step {step}"
            assert health.missing_network(NET, table) == [], f"seed {seed} step {step}"
            for o2 in live:
                assert health.missing_publication(o2, owners[o2], table) == [], (
                    f"seed {seed} step {step} {o2}"
                )
    assert reads["skipped"] > 0 and reads["read"] > 0, f"seed {seed}: {dict(reads)}"


def test_stored_rows_give_the_digest_their_mappings_give() -> None:
    loop6 = ipaddress.IPv6Address("::1")
    m = (*maps(8000, 4), Mapping("tcp", loop6, 8000, IP4, 80), Mapping("udp", ANY6, 53, IP4, 53))
    rows = [
        (
            x.proto,
            verified.address_text(x.host_ip),
            x.host_port,
            verified.address_text(x.container_ip),
            x.container_port,
        )
        for x in m
    ]
    assert verified.row_digest(rows) == verified.pub_digest(list(m))
    assert [verified.row_nat_capable(r) for r in rows] == [rules.nat_capable(x) for x in m]


def test_vouches_takes_digests_as_covers_takes_mappings() -> None:
    v = verified.whole((7, 100), [NET], [("pw:a", maps(8000, 2))])
    good = {"pw:a": verified.pub_digest(maps(8000, 2))}
    assert verified.vouches(v, (7, 100), [NET], good)
    assert verified.vouches(v, (7, 100), [NET], {})
    assert not verified.vouches(v, (7, 101), [NET], good)
    assert not verified.vouches(v, (7, 100), [NET], {"pw:a": verified.pub_digest(maps(8000, 3))})
    assert not verified.vouches(None, (7, 100), [], {})


def test_the_host_firewall_is_looked_at_again_only_after_a_commit(fw: tuple[Firewall, FakeBackend]) -> None:
    f, backend = fw
    f.add_network(NET)

    def looks() -> int:
        return sum(c.startswith("docker-user") for c in backend.calls)

    f.sync_docker_user(["pwbr0"])
    f.sync_docker_user(["pwbr0"])
    assert looks() == 1  # found in place, nothing committed since: not again
    f.publish("pw:a", maps(8000, 3))  # our own commit: the host's tables are untouched
    f.sync_docker_user(["pwbr0"])
    assert looks() == 1
    f.sync_docker_user(["pwbr0", "pwbr9"])  # another set of bridges: look
    assert looks() == 2
    backend.apply([{"add": {"table": {"family": "ip", "name": "filter"}}}])  # dockerd, ufw, a reload
    f.sync_docker_user(["pwbr0", "pwbr9"])
    assert looks() == 3


def test_iptables_legacy_is_always_looked_at(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.host_rules_counted = False  # its changes do not move the nftables generation
    f = Firewall(backend, MemoFile(str(tmp_path / "m.json")))
    for _ in range(3):
        f.sync_docker_user(["pwbr0"])
    assert sum(c.startswith("docker-user") for c in backend.calls) == 3
