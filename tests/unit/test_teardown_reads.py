"""Removing a sandbox reads the firewall table only when it must (issue 11: at 10,000 ports one
read of the table is 20,000 elements of nft JSON). ``rm`` and ``stop`` reconcile after the
supervisor is gone, but the CLI's first reconcile already put the firewall back, so the second
one does not check it again; and a supervisor that still holds its reservations tears its NAT
elements down by key. Counted through the firewall seam (``FakeBackend.calls``), never timed."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from portwright.engine import Engine
from portwright.firewall import rules
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend
from portwright.kernel.fake import FakeHost
from portwright.model import Mapping
from portwright.owners import sandbox_owner
from portwright.publish.nat import held_bindings, known_if_held
from portwright.spec import parse_sandbox_spec
from portwright.state import State


@pytest.fixture
def eng(tmp_path: Path) -> Iterator[tuple[Engine, FakeBackend]]:
    backend = FakeBackend()
    yield Engine(State(str(tmp_path)), firewall=Firewall(backend), host=FakeHost()), backend


def _create(e: Engine, name: str, *publish: str) -> str:
    spec = parse_sandbox_spec(["sleep", "60"], name=name, network="pw0", publish=list(publish), detach=True)
    with ExitStack() as stack:
        live = e.create(spec, stack, supervisor_pid=os.getpid())
        e.started(live, os.getpid())
        stack.pop_all()
    return live.sandbox.id


def _m(proto: str, host: str, port: int) -> Mapping:
    return Mapping(proto, ipaddress.ip_address(host), port, ipaddress.ip_address("198.18.0.2"), 80)


def test_rm_of_an_exited_sandbox_does_not_check_the_whole_firewall_again(
    eng: tuple[Engine, FakeBackend],
) -> None:
    e, backend = eng
    _create(e, "keep", "127.0.0.1:18551:80")
    _create(e, "gone")
    e.mark_exited(e.state.sandbox("gone"), 0)
    del backend.calls[:]
    assert e.remove(["gone"]) == [("gone", None)]
    # the teardown's own tagged unpublish reads once; no second check of the whole firewall
    assert backend.calls.count("read") == 1, backend.calls
    assert e.state.find_sandbox("gone") is None
    e.reconcile()  # the restore itself still works when asked for
    assert "read" in backend.calls


def test_teardown_with_known_mappings_deletes_by_key_without_a_read(eng: tuple[Engine, FakeBackend]) -> None:
    e, backend = eng
    sid = _create(e, "web", "127.0.0.1:18552:80", "127.0.0.1:18553:81/udp")
    rec = e.state.sandbox("web")
    nat = [m for m in rec.sandbox.mappings if rules.nat_capable(m)]
    assert len(nat) == 2 and any(p.owner == sandbox_owner(sid) for p in e.fw.published())
    del backend.calls[:]
    assert e.teardown(rec, known=nat) == []
    assert "read" not in backend.calls, backend.calls
    assert e.fw.published() == []


def test_known_only_when_every_binding_is_held() -> None:
    nat = [_m("tcp", "0.0.0.0", 18554), _m("tcp", "::", 18554), _m("udp", "0.0.0.0", 18555)]
    assert known_if_held(nat, {("tcp", 18554), ("udp", 18555)}) == nat
    assert known_if_held(nat, {("tcp", 18554)}) is None  # the UDP port is not ours any more
    assert known_if_held(nat, {("udp", 18554), ("udp", 18555)}) is None  # protocol matters
    assert known_if_held([], set()) == []


def test_held_bindings_reads_protocol_and_port_of_bound_sockets() -> None:
    with ExitStack() as stack:
        tcp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        udp = stack.enter_context(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
        unbound = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        udp.bind(("::1", 0))
        closed.bind(("127.0.0.1", 0))
        closed.close()
        got = held_bindings([tcp, udp, unbound, closed])
        assert got == {("tcp", tcp.getsockname()[1]), ("udp", udp.getsockname()[1])}
