"""The record table and the --network-alias rules: names and aliases per network, case, the
.portwright zone, reverse names, the hosts-file entries, and clashes refused at run."""

from __future__ import annotations

import ipaddress
import os
from contextlib import ExitStack
from pathlib import Path

import pytest

from portwright.dns.records import Entry, Table, alias_clash, in_zone
from portwright.engine import Engine
from portwright.errors import BadInput, Conflict
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend
from portwright.kernel.fake import FakeHost
from portwright.spec import SandboxSpec, parse_sandbox_spec
from portwright.state import State

A4, B4 = ipaddress.IPv4Address("198.18.0.2"), ipaddress.IPv4Address("198.18.0.3")
A6 = ipaddress.IPv6Address("2001:2::2")


def _table() -> Table:
    return Table.build(
        [
            Entry("n1", "db", ("cache", "Store"), A4, A6),
            Entry("n1", "db2", ("cache",), B4, None),
            Entry("n2", "other", ("db-alias",), ipaddress.IPv4Address("198.18.1.2"), None),
        ]
    )


def test_names_and_aliases_answer_on_their_network_only() -> None:
    t = _table()
    db = t.lookup("n1", "db.")
    assert db is not None and db.v4 == (A4,) and db.v6 == (A6,)
    cache = t.lookup("n1", "CACHE")
    assert cache is not None and set(cache.v4) == {A4, B4} and cache.v6 == (A6,)
    assert t.lookup("n1", "store.portwright.") == t.lookup("n1", "store")
    assert t.lookup("n2", "db") is None  # another network's name is not seen
    assert t.lookup("n1", "other") is None


def test_reverse_names_and_host_entries() -> None:
    t = _table()
    assert t.reverse("n1", "2.0.18.198.in-addr.arpa.") == "db.portwright."
    assert t.reverse("n1", A6.reverse_pointer.upper()) == "db.portwright."
    assert t.reverse("n2", "2.0.18.198.in-addr.arpa") is None
    assert t.host_entries() == [
        ("db.portwright", A4),
        ("db.portwright", A6),
        ("db2.portwright", B4),
        ("other.portwright", ipaddress.IPv4Address("198.18.1.2")),
    ]


def test_zone() -> None:
    assert in_zone("x.portwright.") and in_zone("PORTWRIGHT") and not in_zone("portwright.example.")


def test_alias_clash_rules() -> None:
    others = [Entry("n1", "db", ("cache",)), Entry("n2", "web")]
    assert alias_clash("x", ["DB"], "n1", others) is not None  # an alias shadowing a name
    assert alias_clash("cache", [], "n1", others) is not None  # a name shadowing an alias
    assert alias_clash("x", ["cache"], "n1", others) is None  # shared aliases round-robin
    assert alias_clash("x", ["web"], "n1", others) is None  # another network's name


@pytest.mark.parametrize("bad", ["", "-db", "db-", "a..b", "x" * 64, "sp ace", "2.0.18.198.in-addr.arpa"])
def test_bad_aliases_refused_naming_the_flag(bad: str) -> None:
    with pytest.raises(BadInput, match="--network-alias"):
        parse_sandbox_spec(["true"], aliases=[bad])


def test_aliases_round_trip_and_need_a_bridge() -> None:
    spec = parse_sandbox_spec(["true"], aliases=["db", "cache.internal", "db"])
    assert spec.aliases == ("db", "cache.internal")
    assert SandboxSpec.from_json(spec.to_json()) == spec
    assert "aliases" not in parse_sandbox_spec(["true"]).to_json()  # older readers see no new key
    for net in ("host", "none"):
        with pytest.raises(BadInput, match="--network-alias applies only"):
            parse_sandbox_spec(["true"], network=net, aliases=["db"])


def test_engine_refuses_an_alias_clash_and_leaves_nothing(tmp_path: Path) -> None:
    host = FakeHost()
    eng = Engine(State(str(tmp_path)), firewall=Firewall(FakeBackend()), host=host)
    with ExitStack() as stack:
        eng.create(parse_sandbox_spec(["sleep", "1"], name="db"), stack, supervisor_pid=os.getpid())
        stack.pop_all()
    before = (set(host.netns), dict(host.links), len(eng.state.sandboxes()))
    with ExitStack() as stack, pytest.raises(Conflict, match="'db' is the name of sandbox 'db'"):
        eng.create(parse_sandbox_spec(["sleep", "1"], name="x", aliases=["db"]), stack)
    assert (set(host.netns), dict(host.links), len(eng.state.sandboxes())) == before
