"""The CNI holder keeps exactly what ADD published (issue 13), whatever it sees first.

ADD tells its holder what it published (``holder.told_message`` through ``--entries-fd``); the
holder's ``Keeper`` compares the table with that. Before, the keeper learned its entries from its
own first look at the table, and a map element deleted between ADD's commit and that look was
never known, so never put back (CI: test_cni_recovery's element stayed gone, the two masquerade
rules stayed). Driven here through the real CNI backend over the in-memory firewall.
"""

from __future__ import annotations

import json
import os
import random
import threading

import pytest
from test_cni_plugin import OWNER, Rig, call, env, stdin

from portwright.cni.holder import Keeper, Told, parse_told, read_all, told_message
from portwright.cni.kernel import Host
from portwright.errors import PortInUse, PortwrightError
from portwright.firewall import rules
from portwright.model import Mapping

TABLE = {"family": "inet", "table": "portwright"}


def added(be: Rig) -> Told:
    """ADD the default attachment (one TCP port on a bridge portwright did not create, so two
    masquerade rules too) and return what its holder was told."""
    assert call(be, env("ADD"), stdin())[0] == 0
    told = parse_told(be.fake_host.told[OWNER])
    assert told is not None
    return told


def whole(be: Rig) -> tuple[list[str], int]:
    return sorted(m.docker_format() for m in be.elements.get(OWNER, [])), len(be.masquerade(OWNER))


def test_add_tells_the_holder_exactly_what_it_published() -> None:
    be = Rig()
    told = added(be)
    assert list(told.nat) == be.elements[OWNER]
    assert len(told.rules) == 2 and all(
        c["add"]["rule"]["comment"] == rules.owner_tag(OWNER) for c in told.rules
    )
    assert whole(be) == (["0.0.0.0:8080->80/tcp"], 2)


def test_an_element_deleted_before_the_holders_first_look_is_put_back() -> None:
    """The CI failure: the element goes right after ADD, before the holder ever read the table."""
    be = Rig()
    told = added(be)
    before = whole(be)
    be.fw.backend.apply(rules.delete_elements_commands(list(told.nat)))
    assert whole(be) == ([], 2)
    keeper = Keeper(OWNER, be.fw, told)  # the holder's first look comes only now
    assert keeper.check() == ["nft element 0.0.0.0:8080/tcp"]
    assert whole(be) == before
    assert keeper.check() == []  # whole again: nothing more is written
    assert whole(be) == before


def test_rules_deleted_before_the_first_look_are_put_back_and_a_whole_table_is_left_alone() -> None:
    be = Rig()
    told = added(be)
    before = whole(be)
    keeper = Keeper(OWNER, be.fw, told)
    n = len(be.fake.transactions)
    assert keeper.check() == [] and len(be.fake.transactions) == n  # whole: no write at all
    handles = [r["handle"] for r in rules.owner_rules(be.fw.table(), OWNER)]
    chain = rules.owner_rules(be.fw.table(), OWNER)[0]["chain"]
    be.fw.backend.apply(
        [
            {"delete": {"rule": {"family": "inet", "table": "portwright", "chain": chain, "handle": h}}}
            for h in handles
        ]
    )
    assert whole(be) == (before[0], 0)
    assert keeper.check() == [f"2 rule(s) tagged {rules.owner_tag(OWNER)}"]
    assert whole(be) == before


def test_a_key_another_owner_took_meanwhile_is_not_taken_back() -> None:
    be = Rig()
    told = added(be)
    be.fw.backend.apply(rules.delete_elements_commands(list(told.nat)))
    other = [Mapping.from_row("tcp", "0.0.0.0", 8080, "198.18.200.9", 80)]
    be.fw.publish("sandbox-x", other)
    with pytest.raises(PortInUse, match="sandbox-x"):
        Keeper(OWNER, be.fw, told).check()
    assert [p.owner for p in rules.published(be.fw.table())] == [rules.owner_tag("sandbox-x")]


def test_told_message_round_trips() -> None:
    nat = [
        Mapping.from_row("tcp", "0.0.0.0", 8080, "198.18.200.5", 80),
        Mapping.from_row("udp", "::", 53, "2001:2::5", 53),
    ]
    extra = [
        {"add": {"rule": {"family": "inet", "table": "portwright", "chain": "c", "expr": [], "comment": "x"}}}
    ]
    assert parse_told(told_message(nat, extra)) == Told(tuple(nat), tuple(extra))


@pytest.mark.parametrize(
    "data",
    [
        b"",  # ADD published no NAT, or failed before it did: nothing to keep
        b"  \n",
        b"{not json",
        json.dumps({"nat": []}).encode(),
        json.dumps({"nat": [{"proto": "sctp"}], "rules": []}).encode(),
        json.dumps({"nat": [], "rules": ["add rule"]}).encode(),
        json.dumps([1, 2]).encode(),
    ],
)
def test_parse_told_refuses_what_add_did_not_write(data: bytes) -> None:
    assert parse_told(data) is None


def test_a_failed_add_and_an_add_without_nat_tell_nothing() -> None:
    be = Rig()
    be.fake.fail_next(lambda cmds: any("element" in c.get("add", {}) for c in cmds))
    assert call(be, env("ADD"), stdin())[0] == 1
    assert be.fake_host.told == {}
    # Only a relay of [::1] (NAT cannot serve it): the holder exists, no NAT was published.
    assert call(be, env("ADD"), stdin([{"hostPort": 8080, "containerPort": 80, "hostIP": "::1"}]))[0] == 0
    assert OWNER in be.held and be.fake_host.told == {}


def test_keeper_stress_random_deletions_and_failed_restores() -> None:
    """Bounded, seeded: random faults (elements, rules, the whole table deleted; another owner's
    commits; a restore that fails) and the keeper's checks, in any order. After every check that
    did not fail, exactly ADD's entries are there, and the other owner's are untouched."""
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    rnd = random.Random(seed)
    be = Rig()
    ports = [
        {"hostPort": 8080 + i, "containerPort": 80 + i, "protocol": rnd.choice(["tcp", "udp"])}
        for i in range(6)
    ]
    assert call(be, env("ADD"), stdin(ports))[0] == 0
    told = parse_told(be.fake_host.told[OWNER])
    assert told is not None and len(told.nat) == 6
    keeper, before = Keeper(OWNER, be.fw, told), whole(be)
    other = [Mapping.from_row("tcp", "0.0.0.0", 9000 + i, "198.18.200.9", 80) for i in range(3)]
    be.fw.publish("sandbox-x", other)
    for _ in range(60):
        fault = rnd.randrange(6)
        if fault == 0:
            be.fw.backend.apply(rules.delete_elements_commands(rnd.sample(list(told.nat), rnd.randint(1, 6))))
        elif fault == 1:
            r = rnd.choice(rules.owner_rules(be.fw.table(), OWNER))
            be.fw.backend.apply([{"delete": {"rule": {**TABLE, "chain": r["chain"], "handle": r["handle"]}}}])
        elif fault == 2:
            be.fw.backend.apply([{"delete": {"table": {"family": "inet", "name": "portwright"}}}])
        elif fault == 3:
            be.fw.unpublish("sandbox-x")
            be.fw.publish("sandbox-x", other)
        elif fault == 4:  # the restore itself fails once; the next check repairs
            be.fw.backend.apply(rules.delete_elements_commands([rnd.choice(told.nat)]))
            be.fake.fail_next(lambda cmds: True)
            with pytest.raises(PortwrightError):
                keeper.check()
        if fault == 2:
            be.fw.publish("sandbox-x", other)  # its own restorer's work, not the keeper's
        keeper.check()
        assert whole(be) == before, f"seed {seed}"
        assert sorted(m.host_port for m in be.elements[rules.owner_tag("sandbox-x")]) == [9000, 9001, 9002]
        n = len(be.fake.transactions)
        assert keeper.check() == [] and len(be.fake.transactions) == n, f"seed {seed}"


def _reader(fd: int) -> tuple[threading.Thread, list[bytes]]:
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(read_all(fd)))
    t.start()
    return t, got


def test_the_message_bigger_than_a_pipe_arrives_whole_and_the_pipe_is_closed() -> None:
    host = Host()
    r, w = os.pipe()
    host._told[OWNER] = w
    nat = [Mapping.from_row("tcp", "0.0.0.0", 10000 + i, "198.18.200.5", 80) for i in range(3000)]
    t, got = _reader(r)
    host.tell_holder(OWNER, nat, [])
    t.join(10)
    assert len(got[0]) > 65536 and parse_told(got[0]) == Told(tuple(nat), ())
    assert OWNER not in host._told
    with pytest.raises(OSError):
        os.fstat(w)
    host.tell_holder(OWNER, nat, [])  # told once only: nothing left to write to


def test_a_holder_gone_before_it_is_told_costs_add_nothing() -> None:
    host = Host()
    r, w = os.pipe()
    os.close(r)  # the holder died
    host._told[OWNER] = w
    host.tell_holder(OWNER, [Mapping.from_row("tcp", "0.0.0.0", 8080, "198.18.200.5", 80)], [])
    assert OWNER not in host._told


def test_stopping_an_untold_holder_closes_its_pipe() -> None:
    """A failed ADD: the holder reads end-of-file, so it keeps nothing while it is stopped."""
    host = Host()
    r, w = os.pipe()
    host._told[OWNER] = w
    t, got = _reader(r)
    host.stop_holder(OWNER)  # no such holder process: only the pipe is there to close
    t.join(10)
    assert got == [b""] and parse_told(got[0]) is None and OWNER not in host._told
