"""The k-th sandbox costs the firewall what the 3rd does (issue 14: creating sandboxes slowed as
their number grew). Every CLI command reconciles, and reconcile restores: before, the restore
took the host-wide table lock and read the whole bridge table once per running sandbox, so the
k-th ``run -d`` did O(k) nft runs of O(k) size, waiting on a lock every other process wanted too.
Counted through the firewall seam (``FakeBackend.calls``), never timed."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from portwright.engine import Engine
from portwright.firewall import antispoof
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend
from portwright.kernel.fake import FakeHost
from portwright.spec import parse_sandbox_spec
from portwright.state import State


@pytest.fixture
def eng(tmp_path: Path) -> Iterator[tuple[Engine, FakeBackend]]:
    backend = FakeBackend()
    yield Engine(State(str(tmp_path)), firewall=Firewall(backend), host=FakeHost()), backend


def _create(e: Engine, name: str, *publish: str) -> None:
    spec = parse_sandbox_spec(["sleep", "60"], name=name, network="pw0", publish=list(publish))
    with ExitStack() as stack:
        live = e.create(spec, stack, supervisor_pid=os.getpid())
        e.started(live, os.getpid())
        stack.pop_all()


def _run_cost(e: Engine, backend: FakeBackend, name: str) -> Counter[str]:
    """What one ``run -d`` asks of the firewall: the CLI's reconcile, then the create."""
    del backend.calls[:]
    e.reconcile()
    _create(e, name)
    return Counter(backend.calls)


def test_the_kth_run_costs_the_firewall_what_the_third_does(eng: tuple[Engine, FakeBackend]) -> None:
    e, backend = eng
    costs = [_run_cost(e, backend, f"s{k}") for k in range(1, 41)]
    assert len([r for r in e.state.sandboxes() if r.status == "running"]) == 40
    third, fortieth = costs[2], costs[39]
    assert fortieth == third, f"3rd run: {dict(third)}; 40th run: {dict(fortieth)}"
    assert fortieth["lock"] <= 4  # create's own writes; reconcile of a whole table takes none


def test_reconcile_of_a_whole_table_takes_no_lock_and_reads_each_table_once(
    eng: tuple[Engine, FakeBackend],
) -> None:
    e, backend = eng
    for k in range(25):
        _create(e, f"s{k}", "127.0.0.1::80")  # a free port the kernel picks
    del backend.calls[:]
    e.reconcile()
    calls = Counter(backend.calls)
    assert calls["lock"] == 0 and calls["apply"] == 0
    assert calls["read"] == 1 and calls[f"read {antispoof.FAMILY} {antispoof.TABLE}"] == 1


def test_restore_after_a_flush_puts_every_port_back_in_one_transaction(
    eng: tuple[Engine, FakeBackend],
) -> None:
    e, backend = eng
    for k in range(20):
        _create(e, f"s{k}")
    whole = antispoof.ports(backend.dump(antispoof.FAMILY, antispoof.TABLE))
    assert len(whole) == 20
    backend.tables.pop((antispoof.FAMILY, antispoof.TABLE))  # nft flush ruleset, bridge side
    before = len(backend.transactions)
    lines = e.restore()
    assert len(backend.transactions) == before + 1  # inet portwright is whole: the bridge's only
    assert antispoof.ports(backend.dump(antispoof.FAMILY, antispoof.TABLE)) == whole
    assert sum("restored anti-spoofing" in line for line in lines) == 20
    assert e.restore() == []  # whole again: quiet


def test_restore_leaves_out_a_sandbox_being_torn_down(eng: tuple[Engine, FakeBackend]) -> None:
    e, backend = eng
    _create(e, "keep")
    _create(e, "going")
    going = e.state.sandbox("going")
    e.mark_removing(going.id)
    backend.tables.pop((antispoof.FAMILY, antispoof.TABLE))
    lines = e.restore()
    assert [line.split(":")[0] for line in lines if "anti-spoofing" in line] == ["sandbox keep"]
    assert set(antispoof.ports(backend.dump(antispoof.FAMILY, antispoof.TABLE))) == {
        e.state.sandbox("keep").sandbox.veth
    }
