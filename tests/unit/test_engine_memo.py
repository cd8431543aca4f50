"""Every command's reconcile, and the teardown of a sandbox whose supervisor is gone, cost no read
of the NAT table when nothing was committed since it was seen whole (#11): at 10,000 published
ports each read is 20,000 elements. Counted through the fake backend, whose generation is its
count of committed batches; never timed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from portwright.engine import Engine, Live
from portwright.firewall import rules
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend
from portwright.kernel.fake import FakeHost
from portwright.spec import parse_sandbox_spec
from portwright.state import State

_LIVE: list[Live] = []


@pytest.fixture
def eng(tmp_path: Path) -> Iterator[tuple[Engine, FakeBackend]]:
    backend = FakeBackend()
    try:
        yield Engine(State(str(tmp_path)), firewall=Firewall(backend), host=FakeHost()), backend
    finally:
        while _LIVE:  # the reservations are real sockets: other tests want these ports
            for s in _LIVE.pop().sockets:
                s.close()


def _create(e: Engine, name: str, *publish: str) -> None:
    spec = parse_sandbox_spec(["sleep", "60"], name=name, network="pw0", publish=list(publish))
    with ExitStack() as stack:
        live = e.create(spec, stack, supervisor_pid=os.getpid())
        _LIVE.append(live)
        e.started(live, os.getpid())
        stack.pop_all()


def test_commands_after_the_first_read_nothing_while_nobody_commits(eng: tuple[Engine, FakeBackend]) -> None:
    e, backend = eng
    _create(e, "a", "61100-61199:80-179")
    e.reconcile()  # sees the table whole, and records it
    for _ in range(3):
        del backend.calls[:]
        e.reconcile()
        assert backend.calls.count("read") == 0, backend.calls
    _create(e, "b", "61200-61249:80-129")  # our own commits carry the record forward
    del backend.calls[:]
    e.reconcile()
    assert backend.calls.count("read") == 0, backend.calls
    backend.apply(rules.delete_elements_commands(e.state.sandbox("a").sandbox.mappings[:1]))  # a stray delete
    del backend.calls[:]
    lines = e.restore()
    assert backend.calls.count("read") >= 1 and any("sandbox a: restored" in line for line in lines)


def test_a_dead_supervisors_sandbox_goes_by_key_without_a_read(eng: tuple[Engine, FakeBackend]) -> None:
    e, backend = eng
    _create(e, "gone", "61300-61399:80-179")
    e.reconcile()
    rec = e.state.sandbox("gone")
    del backend.calls[:]
    assert e.teardown(rec) == []
    assert backend.calls.count("read") == 0, backend.calls
    assert [p for p in rules.published(backend.read()) if p.owner.endswith(rec.id)] == []


def test_a_vouched_restore_decodes_no_mappings(
    eng: tuple[Engine, FakeBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    e, backend = eng
    _create(e, "c", "61400-61449:80-129")
    e.reconcile()
    decoded: list[str] = []
    real = State._ports_of

    def counting(self: State, sid: str) -> object:
        decoded.append(sid)
        return real(self, sid)

    monkeypatch.setattr(State, "_ports_of", counting)
    assert e.restore() == []
    assert decoded == []
    backend.apply([{"add": {"table": {"family": "inet", "name": "someone_else"}}}])
    assert e.restore() == []  # not vouched for now: decoded and checked, and still whole
    assert decoded != []
