"""The engine without root: a real state database, the in-memory firewall (``firewall.fake``) and an
in-memory host kernel (``kernel.fake``). Create, publish, conflict, teardown, reconcile after a
simulated crash, and a failure at any step leaving nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from portwright.engine import Engine, Live
from portwright.errors import KernelError, NotFound, PortInUse, PortwrightError
from portwright.firewall import antispoof, rules
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend
from portwright.kernel.fake import FakeHost
from portwright.owners import sandbox_owner
from portwright.spec import parse_sandbox_spec
from portwright.state import State


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Engine, FakeBackend, FakeHost]]:
    backend, host = FakeBackend(), FakeHost()
    eng = Engine(State(str(tmp_path)), firewall=Firewall(backend), host=host)
    yield eng, backend, host


def _create(
    eng: Engine, *publish: str, mode: str = "nat", network: str = "pw0", name: str | None = None
) -> Live:
    spec = parse_sandbox_spec(
        ["sleep", "60"], name=name, network=network, publish=list(publish), publish_mode=mode
    )
    with ExitStack() as stack:
        live = eng.create(spec, stack, supervisor_pid=os.getpid())
        eng.started(live, os.getpid())
        stack.pop_all()
    return live


def _elements(backend: FakeBackend, owner: str) -> list[rules.Published]:
    tag = rules.owner_tag(owner)
    return [p for p in rules.published(backend.read()) if p.owner == tag]


def test_create_builds_records_and_publishes(parts: tuple[Engine, FakeBackend, FakeHost]) -> None:
    eng, backend, host = parts
    port = _free_port()
    live = _create(eng, f"127.0.0.1:{port}:80", name="web")
    sb = live.sandbox
    assert f"pw-{sb.name}" in host.netns and sb.veth in host.links
    assert host.cgroup_path(sb.id) in host.cgroups
    rec = eng.state.sandbox("web")
    assert rec.status == "running" and rec.sandbox.ip4 is not None
    assert [(m.host_port, m.container_port) for m in rec.sandbox.mappings] == [(port, 80)]
    [el] = _elements(backend, sandbox_owner(sb.id))
    assert (el.host_port, el.container_ip, el.container_port) == (port, rec.sandbox.ip4, 80)
    assert "pw0" in Firewall(backend).networks()
    assert live.publisher is not None and live.publisher.check() == []
    assert [d["path"] for d in live.publisher.describe()] == ["nat"]
    assert rec.spec.publish[0].text == f"127.0.0.1:{port}:80"  # the typed spec, read back
    live.publisher.unpublish()


def test_a_taken_port_is_refused_and_nothing_is_left(parts: tuple[Engine, FakeBackend, FakeHost]) -> None:
    eng, backend, host = parts
    port = _free_port()
    first = _create(eng, f"127.0.0.1:{port}:80", name="a")
    before = (set(host.netns), dict(host.links), set(host.cgroups), len(eng.state.sandboxes()))
    with pytest.raises(PortInUse, match="sandbox 'a'"):
        _create(eng, f"127.0.0.1:{port}:81", name="b")
    assert (set(host.netns), dict(host.links), set(host.cgroups), len(eng.state.sandboxes())) == before
    assert len(_elements(backend, sandbox_owner(first.sandbox.id))) == 1
    assert first.publisher is not None
    first.publisher.unpublish()


def test_finish_removes_everything(parts: tuple[Engine, FakeBackend, FakeHost]) -> None:
    eng, backend, host = parts
    live = _create(eng, f"127.0.0.1:{_free_port()}:80", f"127.0.0.1:{_free_port()}:53/udp")
    assert eng.finish(live, 0) == []
    assert set(host.leftovers()) <= {"links"} and set(host.links) == {eng.state.network("pw0").bridge}
    assert rules.published(backend.read()) == []
    assert eng.state.sandboxes() == []
    # One unpublish, by the publisher: teardown does not read and rewrite the table again.
    inet = [t for t in backend.transactions if not any("bridge" in str(c) for c in t)]
    unpublishes = [t for t in inet if any("delete" in c for c in t)]
    assert len(unpublishes) == 1
    # The anti-spoofing elements of its bridge port went with it (issue 19).
    # and, as no other sandbox is protected, the table itself (no empty table left behind).
    assert backend.dump(antispoof.FAMILY, antispoof.TABLE) == {}
    assert [str(a) for a in backend.conntrack_addrs[-1]] == [str(live.sandbox.ip4), str(live.sandbox.ip6)]


def test_reconcile_after_a_crash_clears_kernel_and_state(parts: tuple[Engine, FakeBackend, FakeHost]) -> None:
    eng, backend, host = parts
    live = _create(eng, f"127.0.0.1:{_free_port()}:80", name="crashy")
    assert live.publisher is not None
    for s in getattr(live.publisher, "sockets", []):  # the dead supervisor's sockets die with it
        s.close()
    dead = subprocess.Popen(["true"])
    dead.wait()
    with eng.state.tx():
        eng.state.update_sandbox(live.sandbox.id, supervisor_pid=dead.pid, supervisor_start=1)
    assert eng.reconcile() == ["crashy"]
    assert not host.netns and host.cgroup_path(live.sandbox.id) in host.killed
    assert rules.published(backend.read()) == []
    assert eng.state.sandboxes() == []


@pytest.mark.parametrize(
    "step", ["netns_add", "create_veth", "configure_sandbox", "cgroup_create", "publish"]
)
def test_a_failure_at_any_step_leaves_nothing(parts: tuple[Engine, FakeBackend, FakeHost], step: str) -> None:
    eng, backend, host = parts
    eng.ensure_network("pw0")
    before_links, before_tx = dict(host.links), len(backend.transactions)
    port = _free_port()
    if step == "publish":
        backend.fail_next(1)
    else:
        host.fail_on.add(step)
    with pytest.raises(KernelError):
        _create(eng, f"127.0.0.1:{port}:80", name="broken")
    assert not host.netns and not host.cgroups and host.links == before_links
    assert eng.state.sandboxes() == []
    assert rules.published(backend.read()) == []
    assert len(backend.transactions) >= before_tx
    with socket.socket() as s:  # the reservation was closed: the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_run_on_a_network_removed_meanwhile_is_refused(parts: tuple[Engine, FakeBackend, FakeHost]) -> None:
    eng, _, host = parts
    eng.create_network("n1")
    net = eng.state.network("n1")
    eng.remove_network("n1")
    spec = parse_sandbox_spec(["true"], network="n1")
    with pytest.raises(NotFound, match="was removed while"):
        eng._record(spec, "abcdef012345", "x", net, None)
    assert net.bridge not in host.links and eng.state.sandboxes() == []


def test_a_network_removed_while_run_waits_for_the_lock_gets_no_rules_back(
    parts: tuple[Engine, FakeBackend, FakeHost], monkeypatch: pytest.MonkeyPatch
) -> None:
    """'network rm' holds the network lock while run's ensure_network waits for it: run must not
    put back the rules of the network rm has just removed (CI's racing test left them)."""
    eng, backend, host = parts
    eng.create_network("n9")
    real_lock = eng._network_lock

    @contextlib.contextmanager
    def rm_got_there_first() -> Iterator[None]:
        monkeypatch.setattr(eng, "_network_lock", real_lock)
        eng.remove_network("n9")  # it held the lock first and finished
        with real_lock():
            yield

    monkeypatch.setattr(eng, "_network_lock", rm_got_there_first)
    with pytest.raises(NotFound, match="network 'n9' not found"):
        eng.ensure_network("n9")
    assert "n9" not in Firewall(backend).networks()
    assert not [i for i in json.dumps(backend.read()).split('"') if i == "pw-net:n9"]


def test_remove_network_in_use_refuses(parts: tuple[Engine, FakeBackend, FakeHost]) -> None:
    eng, _, _ = parts
    eng.create_network("n2")
    live = _create(eng, network="n2", name="user")
    with pytest.raises(PortwrightError, match="in use by sandbox"):
        eng.remove_network("n2")
    eng.finish(live, 0)
    eng.remove_network("n2")
    assert eng.state.find_network("n2") is None


def test_none_and_host_networks(parts: tuple[Engine, FakeBackend, FakeHost]) -> None:
    eng, backend, host = parts
    none = _create(eng, network="none", name="iso")
    assert none.publisher is None and none.sandbox.veth is None and "pw-iso" in host.netns
    hosted = _create(eng, network="host", name="hn")
    assert hosted.sandbox.netns is None and hosted.publisher is not None and hosted.publisher.name == "host"
    for live in (none, hosted):
        eng.finish(live, 0)
    assert not host.netns and not host.cgroups
    assert rules.published(backend.read()) == []


def test_a_network_whose_rules_vanished_gets_them_back(parts: tuple[Engine, FakeBackend, FakeHost]) -> None:
    """nft flush ruleset (a firewall reload) took the table; the next run puts the network back."""
    eng, backend, _ = parts
    eng.ensure_network("pw0")
    Firewall(backend).remove_network("pw0")
    assert "pw0" not in Firewall(backend).networks()
    live = _create(eng, f"127.0.0.1:{_free_port()}:80")
    assert "pw0" in Firewall(backend).networks()
    eng.finish(live, 0)
