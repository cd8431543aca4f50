"""Firewall reload recovery without root (issue 13): what is missing is found, put back once and
only for owners still serving; ``ports``/``audit`` call a lost publication what it is; the
event-driven re-check deadline."""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from portwright.diagnose import audit as audit_mod
from portwright.diagnose.nftview import parse_ruleset
from portwright.diagnose.ports import port_rows, table_rows
from portwright.diagnose.snapshot import Snapshot
from portwright.engine import Engine, Live
from portwright.firewall import health, rules
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend
from portwright.kernel.fake import FakeHost
from portwright.model import Mapping, Network
from portwright.owners import sandbox_owner
from portwright.recovery import SETTLE_SECONDS, FirewallWatch
from portwright.spec import parse_sandbox_spec
from portwright.state import State

ip = ipaddress.ip_address
NET = Network(
    name="n1",
    bridge="pw-abcd0001",
    subnet4=ipaddress.IPv4Network("198.18.7.0/24"),
    gateway4=ipaddress.IPv4Address("198.18.7.1"),
    subnet6=ipaddress.IPv6Network("2001:2:0:7::/64"),
    gateway6=ipaddress.IPv6Address("2001:2:0:7::1"),
)
MAPS = (
    Mapping("tcp", ip("0.0.0.0"), 18080, ip("198.18.7.2"), 80),
    Mapping("tcp", ip("::"), 18080, ip("2001:2:0:7::2"), 80),
    Mapping("udp", ip("127.0.0.1"), 15353, ip("198.18.7.2"), 53),
)
OWNER = "pw:0123456789ab"


def _fw() -> tuple[Firewall, FakeBackend]:
    backend = FakeBackend()
    fw = Firewall(backend)
    fw.ensure_base()
    fw.add_network(NET)
    fw.publish(OWNER, MAPS, flush_udp=False)
    return fw, backend


def _delete(backend: FakeBackend, what: str) -> None:
    if what == "table":
        backend.apply(rules.table_commands_delete())
    elif what == "chain":
        backend.apply(
            [{"flush": {"chain": {"family": "inet", "table": "portwright", "name": "net-postrouting"}}}]
        )
    elif what == "element":
        key = {"concat": ["tcp", 18080]}
        backend.apply(
            [
                {
                    "delete": {
                        "element": {
                            "family": "inet",
                            "table": "portwright",
                            "name": rules.MAP_ANY4,
                            "elem": [key],
                        }
                    }
                }
            ]
        )
    elif what == "bridge":
        backend.apply(
            [
                {
                    "delete": {
                        "element": {
                            "family": "inet",
                            "table": "portwright",
                            "name": rules.SET_BRIDGES,
                            "elem": [NET.bridge],
                        }
                    }
                }
            ]
        )


def test_a_whole_table_has_nothing_missing() -> None:
    fw, backend = _fw()
    t = backend.read()
    assert health.missing_base(t) == []
    assert health.missing_network(NET, t) == []
    assert health.missing_publication(OWNER, MAPS, t) == []
    before = len(backend.transactions)
    assert fw.ensure_network(NET) == [] and fw.ensure_published(OWNER, MAPS) == []
    assert len(backend.transactions) == before  # nothing written when whole


@pytest.mark.parametrize("what", ["table", "chain", "element", "bridge"])
def test_each_loss_is_named_and_put_back_once(what: str) -> None:
    fw, backend = _fw()
    whole = backend.read()
    _delete(backend, what)
    t = backend.read()
    missing = (
        health.missing_base(t) + health.missing_network(NET, t) + health.missing_publication(OWNER, MAPS, t)
    )
    assert missing, what
    fw.ensure_network(NET)
    fw.ensure_published(OWNER, MAPS)
    t = backend.read()
    assert health.missing_base(t) == health.missing_network(NET, t) == []
    assert health.missing_publication(OWNER, MAPS, t) == []
    assert sorted(map(str, rules.published(t))) == sorted(map(str, rules.published(whole)))
    # a second pass is a no-op (no duplicate rules)
    assert fw.ensure_network(NET) == [] and fw.ensure_published(OWNER, MAPS) == []
    assert len([r for r in rules._objects(t, "rule")]) == len([r for r in rules._objects(whole, "rule")])


def test_an_owner_no_longer_wanted_is_not_put_back() -> None:
    fw, backend = _fw()
    _delete(backend, "table")
    assert fw.ensure_published(OWNER, MAPS, wanted=lambda: False) == []
    assert rules.published(backend.read()) == []


# ------------------------------------------------------------------------ the engine
@pytest.fixture
def eng(tmp_path: Path) -> Iterator[tuple[Engine, FakeBackend]]:
    backend = FakeBackend()
    yield Engine(State(str(tmp_path)), firewall=Firewall(backend), host=FakeHost()), backend


def _create(e: Engine, *publish: str, name: str) -> Live:
    spec = parse_sandbox_spec(["sleep", "60"], name=name, network="pw0", publish=list(publish))
    with ExitStack() as stack:
        live = e.create(spec, stack, supervisor_pid=os.getpid())
        e.started(live, os.getpid())
        stack.pop_all()
    return live


def test_restore_puts_back_networks_and_running_sandboxes(eng: tuple[Engine, FakeBackend]) -> None:
    e, backend = eng
    live = _create(e, "127.0.0.1:18081:80", name="web")
    whole = backend.read()
    backend.apply(rules.table_commands_delete())  # nft flush ruleset
    lines = e.restore()
    assert any(line.startswith("network pw0: restored") for line in lines)
    assert any(line.startswith("sandbox web: restored") for line in lines)
    assert sorted(map(str, rules.published(backend.read()))) == sorted(map(str, rules.published(whole)))
    assert e.restore() == []  # whole again: quiet
    assert live.publisher is not None
    live.publisher.unpublish()


def test_restore_leaves_a_sandbox_being_torn_down(eng: tuple[Engine, FakeBackend]) -> None:
    """The race the watcher must not win: teardown has begun (status 'removing'), its elements
    are gone; restore must not publish them again behind its back."""
    e, backend = eng
    live = _create(e, "127.0.0.1:18082:80", name="web")
    e.mark_removing(live.sandbox.id)
    assert live.publisher is not None
    live.publisher.unpublish()
    e.restore()
    assert not [
        p
        for p in rules.published(backend.read())
        if p.owner == rules.owner_tag(sandbox_owner(live.sandbox.id))
    ]


def test_ensure_network_repairs_a_partly_deleted_network(eng: tuple[Engine, FakeBackend]) -> None:
    """'Every command makes sure the networks' rules exist': a network whose bridge element is
    gone but whose name still shows in the table used to be left as it was."""
    e, backend = eng
    live = _create(e, "127.0.0.1:18083:80", name="web")
    net = e.state.network("pw0")
    backend.apply(
        [
            {
                "delete": {
                    "element": {
                        "family": "inet",
                        "table": "portwright",
                        "name": rules.SET_BRIDGES,
                        "elem": [net.bridge],
                    }
                }
            }
        ]
    )
    e.ensure_network("pw0")
    assert net.bridge in rules.bridges(backend.read())
    assert live.publisher is not None
    live.publisher.unpublish()


# ------------------------------------------------------------------------ ports and audit
def test_ports_and_audit_name_a_publication_the_kernel_lost(eng: tuple[Engine, FakeBackend]) -> None:
    e, backend = eng
    live = _create(e, "18084:80", name="web")
    rec = e.state.sandbox("web")

    def snap() -> Snapshot:
        return Snapshot(
            listeners=[],
            ruleset=parse_ruleset({"nftables": backend.read().get("nftables", [])}),
            sandboxes=[rec],
            alive=lambda r: True,
        )

    assert not [r for r in port_rows(snap()) if r.degraded]
    assert "degraded" not in {f.code for f in audit_mod.audit(snap()).findings}
    backend.apply(rules.table_commands_delete())
    rows = port_rows(snap())
    lost = [r for r in rows if r.degraded]
    assert {(r.port, r.owner, str(r.host_ip)) for r in lost} >= {(18084, "web", "0.0.0.0")}
    assert all("MISSING" in row[-1] for row in table_rows(lost))
    found = [f for f in audit_mod.audit(snap()).findings if f.code == "degraded"]
    assert found and all(f.severity == "high" and "portwright prune" in f.fix for f in found)
    assert live.publisher is not None
    live.publisher.unpublish()


# ------------------------------------------------------------------------ the watch
class _Events:
    def __init__(self) -> None:
        self.pending = False

    def drain(self) -> bool:
        seen, self.pending = self.pending, False
        return seen

    def fileno(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_watch_is_due_after_a_change_settles_not_before() -> None:
    ev = _Events()
    w = FirewallWatch(ev)  # type: ignore[arg-type]
    assert not w.take()  # nothing changed: the fallback is far away
    ev.pending = True
    w.ready([ev])
    now = time.monotonic()
    assert not w.take(now)  # still settling
    assert w.take(now + SETTLE_SECONDS + 0.01)
    assert not w.take(now + SETTLE_SECONDS + 0.02)  # once per change
    w.ready([])  # no event: no new deadline
    assert not w.take(now + 1.0)


def test_ensure_all_repairs_everything_in_one_transaction() -> None:
    fw, backend = _fw()
    other = (Mapping("tcp", ip("0.0.0.0"), 18090, ip("198.18.7.3"), 80),)
    fw.publish("pw:ba9876543210", other, flush_udp=False)
    whole = backend.read()
    _delete(backend, "table")
    before = len(backend.transactions)
    pubs = [(OWNER, MAPS, lambda: True), ("pw:ba9876543210", other, lambda: True)]
    repaired = dict(fw.ensure_all([NET], pubs))
    assert len(backend.transactions) == before + 1  # one atomic batch for all of it
    assert set(repaired) == {"table", f"network {NET.name}", OWNER, "pw:ba9876543210"}
    assert sorted(map(str, rules.published(backend.read()))) == sorted(map(str, rules.published(whole)))
    assert fw.ensure_all([NET], pubs) == [] and len(backend.transactions) == before + 1


def test_ensure_all_leaves_a_key_another_owner_took() -> None:
    fw, backend = _fw()
    _delete(backend, "element")  # OWNER's tcp 0.0.0.0:18080
    thief = (Mapping("tcp", ip("0.0.0.0"), 18080, ip("198.18.7.9"), 80),)
    fw.publish("pw:ffffffffffff", thief, flush_udp=False)
    repaired = dict(fw.ensure_all([NET], [(OWNER, MAPS, lambda: True)]))
    assert "taken by pw:ffffffffffff" in repaired[OWNER][0]
    owners = {
        p.owner for p in rules.published(backend.read()) if p.host_port == 18080 and p.host_ip.version == 4
    }
    assert owners == {"pw:ffffffffffff"}


def test_two_state_dirs_with_one_network_name_never_undo_each_other() -> None:
    """Tests and benches run several state directories on one host, each with its own ``pw0`` on
    its own bridge and subnet. Putting one back must not take the other's away: before, each
    repair deleted every ``pw-net:n1`` rule and element, so two watchers undid each other after
    every nftables event, forever."""
    other = Network(
        name="n1",
        bridge="pw-abcd0002",
        subnet4=ipaddress.IPv4Network("198.18.8.0/24"),
        gateway4=ipaddress.IPv4Address("198.18.8.1"),
    )
    fw, backend = _fw()
    fw.add_network(other)
    assert health.missing_network(NET, backend.read()) == []
    assert health.missing_network(other, backend.read()) == []
    # Only the other one's bridge element goes: only it is missing, and repairing it is enough.
    backend.apply(
        [
            {
                "delete": {
                    "element": {
                        "family": rules.FAMILY,
                        "table": rules.TABLE,
                        "name": rules.SET_BRIDGES,
                        "elem": [other.bridge],
                    }
                }
            }
        ]
    )
    assert health.missing_network(NET, backend.read()) == []
    assert health.missing_network(other, backend.read()) == [f"bridge {other.bridge} in set bridges"]
    fw.ensure_network(other)
    assert health.missing_network(NET, backend.read()) == []
    assert health.missing_network(other, backend.read()) == []
    # One of NET's rules goes: the count is per network, not per shared tag.
    rule = rules.network_rules(NET, backend.read())[0]
    backend.apply(
        [
            {
                "delete": {
                    "rule": {
                        "family": rules.FAMILY,
                        "table": rules.TABLE,
                        "chain": rule["chain"],
                        "handle": rule["handle"],
                    }
                }
            }
        ]
    )
    assert health.missing_network(NET, backend.read()) != []
    assert fw.ensure_network(other) == [] and fw.ensure_network(NET) != []
    assert health.missing_network(NET, backend.read()) == health.missing_network(other, backend.read()) == []
    # Removing one network leaves the other whole.
    fw.remove_network("n1", NET)
    assert health.missing_network(other, backend.read()) == []
    assert rules.network_rules(NET, backend.read()) == []
