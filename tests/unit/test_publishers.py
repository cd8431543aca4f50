"""Every publisher behind the one interface, without root: the in-memory firewall and a backend on
loopback standing in for the sandbox. The same behaviour cases run for each mechanism."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator

import pytest

from portwright.errors import BadInput, PortInUse
from portwright.firewall import rules
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend
from portwright.model import Mapping
from portwright.publish import registry
from portwright.publish.base import Publisher, Target, allocate
from portwright.spec import parse_sandbox_spec

LOOP4 = ipaddress.IPv4Address("127.0.0.1")
MECHANISMS = ("nat", "proxy")


class Echo:
    """A TCP server on 127.0.0.1 that answers every line with 'echo:' + line."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(1024)
                conn.sendall(b"echo:" + data)


@pytest.fixture
def echo() -> Iterator[Echo]:
    e = Echo()
    yield e
    e.sock.close()


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _publish(mode: str, backend: FakeBackend, echo: Echo, spec_text: str) -> tuple[Publisher, list[Mapping]]:
    spec = parse_sandbox_spec(["x"], publish=[spec_text], publish_mode=mode)
    pub = registry.create(mode, registry.PublishContext(spec, "pw:0123456789ab", Firewall(backend)))
    bound = allocate(spec.port_specs(), Target(LOOP4, None), [], ipv6_host=_ipv6(), dual_stack=pub.dual_stack)
    bound = [(Mapping(m.proto, m.host_ip, m.host_port, m.container_ip, echo.port), s) for m, s in bound]
    pub.publish(bound)
    pub.serve()
    return pub, [m for m, _ in bound]


def _ask(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as c:
        c.sendall(b"hi")
        return c.recv(100)


@pytest.mark.parametrize("mode", MECHANISMS)
def test_localhost_over_ipv6_reaches_the_sandbox(mode: str, echo: Echo) -> None:
    if not _ipv6():
        pytest.skip("no IPv6 on this host")
    backend = FakeBackend()
    pub, maps = _publish(mode, backend, echo, "80")
    try:
        port = maps[0].host_port
        assert _ask("::1", port) == b"echo:hi"  # the article's [::1] pitfall: served, not a dead placeholder
    finally:
        assert pub.unpublish() == []


@pytest.mark.parametrize("mode", MECHANISMS)
def test_describe_names_every_binding_and_check_is_clean(mode: str, echo: Echo) -> None:
    backend = FakeBackend()
    pub, maps = _publish(mode, backend, echo, "127.0.0.1::80")
    try:
        assert [d["binding"] for d in pub.describe()] == [f"127.0.0.1:{maps[0].host_port}/tcp"]
        assert pub.check() == []
    finally:
        pub.unpublish()


@pytest.mark.parametrize("mode", MECHANISMS)
def test_unpublish_frees_the_port_and_the_table(mode: str, echo: Echo) -> None:
    backend = FakeBackend()
    pub, maps = _publish(mode, backend, echo, "127.0.0.1::80")
    assert pub.unpublish() == []
    assert rules.published(backend.read()) == []
    with socket.socket() as s:  # SO_REUSEADDR: TIME_WAIT leftovers do not count, a listener would
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", maps[0].host_port))
        s.listen()


def test_nat_puts_ipv4_in_the_table_and_check_sees_it_go(echo: Echo) -> None:
    backend = FakeBackend()
    pub, maps = _publish("nat", backend, echo, "127.0.0.1::80")
    try:
        [el] = rules.published(backend.read())
        assert (el.host_port, el.container_ip, el.owner) == (maps[0].host_port, LOOP4, "pw:0123456789ab")
        Firewall(backend).unpublish("pw:0123456789ab")  # someone flushed our elements
        assert pub.check() and "missing" in pub.check()[0]
    finally:
        pub.unpublish()


def test_proxy_relays_ipv4_itself_and_check_sees_the_relay_stop(echo: Echo) -> None:
    backend = FakeBackend()
    pub, maps = _publish("proxy", backend, echo, "127.0.0.1::80")
    assert _ask("127.0.0.1", maps[0].host_port) == b"echo:hi"
    assert rules.published(backend.read()) == []  # no kernel NAT in proxy mode
    assert pub.stats()[maps[0].docker_format()]["total"] == 1
    pub.unpublish()
    assert pub.check() == ["the userland relay is not running"]


def test_host_mode_refuses_an_exposed_port_someone_holds() -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        spec = parse_sandbox_spec(["x"], network="host", expose=[str(port)])
        pub = registry.create(
            "host", registry.PublishContext(spec, "pw:0123456789ab", Firewall(FakeBackend()))
        )
        with pytest.raises(PortInUse, match=str(port)):
            pub.publish([])
    pub.publish([])  # free now
    assert pub.describe() == [{"binding": f"*:{port}/tcp", "path": "host (the command's own socket)"}]


def test_the_registry_builds_by_name_and_refuses_unknown_names() -> None:
    spec = parse_sandbox_spec(["x"])
    ctx = registry.PublishContext(spec, "pw:0123456789ab", Firewall(FakeBackend()))
    assert {registry.create(n, ctx).name for n in registry.names()} >= {"nat", "proxy", "host", "host-remap"}
    assert registry.mode_for(spec) == "nat"
    assert registry.mode_for(parse_sandbox_spec(["x"], network="host")) == "host"
    assert registry.mode_for(parse_sandbox_spec(["x"], network="host", publish=["8080:80"])) == "host-remap"
    assert (
        registry.mode_for(parse_sandbox_spec(["x"], network="host", publish_all=True, expose=["80"]))
        == "host-remap"
    )
    assert registry.mode_for(parse_sandbox_spec(["x"], network="none")) is None
    with pytest.raises(BadInput, match="teleport"):
        registry.create("teleport", ctx)
