"""Unit tests for the CNI commands over a fake kernel backend (no root needed)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

import pytest

from portwright.cni import plugin
from portwright.cni import protocol as p
from portwright.cni.holder import Binding
from portwright.errors import PortInUse
from portwright.firewall import rules
from portwright.model import Mapping

CID = "c0ffee" * 10 + "beef"
PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "pwtcni0"}, {"name": "vethx"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"interface": 2, "address": "198.18.200.5/24", "gateway": "198.18.200.1"}]}


class FakeBackend:
    """Records what the commands ask of the kernel; can be told to fail."""

    def __init__(self) -> None:
        self.elements: dict[str, list[Mapping]] = {}
        self.bridges: dict[str, str] = {}
        self.held: dict[str, tuple[int, str, tuple[Binding, ...]]] = {}
        self.flushed: list[tuple[str, int]] = []
        self.netns = {"/run/netns/x"}
        self.host_busy: set[tuple[str, int]] = set()
        self.fail_publish = False
        self.fail_holder: str | None = None
        self.status_problem: str | None = None

    def nat_capable(self, m: Mapping) -> bool:
        return rules.nat_capable(m)

    def published(self) -> dict[str, list[Mapping]]:
        out = {k: list(v) for k, v in self.elements.items()}
        for k in self.bridges:
            out.setdefault(k, [])
        return out

    def publish(self, owner: str, mappings: Sequence[Mapping], bridge: str | None,
                subnets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network], snat: bool) -> None:
        self.subnets = list(subnets)
        self.elements[owner] = list(mappings)
        if self.fail_publish:
            raise p.CniError(p.E_KERNEL, "nft said no")
        if bridge and snat:
            self.bridges[owner] = bridge

    def unpublish(self, owner: str) -> None:
        self.elements.pop(owner, None)
        self.bridges.pop(owner, None)

    def flush_conntrack(self, proto: str, port: int) -> None:
        self.flushed.append((proto, port))

    def check_bridge(self, owner: str, bridge: str, snat: bool) -> str | None:
        return None if not snat or owner in self.bridges else f"rules of {owner} on {bridge} missing"

    def start_holder(self, owner: str, network: str, bindings: Sequence[Binding]) -> None:
        if self.fail_holder:
            raise PortInUse(self.fail_holder, "pid 1 (nginx: nginx)")
        self.held[owner] = (4242, network, tuple(bindings))

    def holders(self) -> dict[str, tuple[int, str]]:
        return {k: (v[0], v[1]) for k, v in self.held.items()}

    def stop_holder(self, owner: str) -> None:
        self.held.pop(owner, None)

    def check_host_port(self, m: Mapping) -> None:
        if (m.proto, m.host_port) in self.host_busy:
            raise PortInUse(f"{m.host_binding()}/{m.proto}", "pid 7 (python3: http.server)")

    def netns_exists(self, path: str) -> bool:
        return path in self.netns

    def status(self) -> str | None:
        return self.status_problem


def env(cmd: str, cid: str = CID, ifname: str = "eth0", netns: str = "/run/netns/x") -> dict[str, str]:
    return {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": netns,
            "CNI_PATH": "/usr/lib/cni"}


def stdin(pms: list[dict[str, object]] | None = None, version: str = "1.0.0", **kw: object) -> bytes:
    c: dict[str, object] = {"cniVersion": version, "name": "pwnet", "type": "portwright-cni",
                            "prevResult": PREV,
                            "runtimeConfig": {"portMappings": pms if pms is not None else
                                              [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}
    c.update(kw)
    return json.dumps({k: v for k, v in c.items() if v is not None}).encode()


def call(be: FakeBackend, e: dict[str, str], data: bytes) -> tuple[int, dict[str, object] | None]:
    code, out = plugin.run(e, data, lambda: be)
    return code, (json.loads(out) if out else None)


OWNER = p.owner_tag(CID, "eth0")


def test_add_publishes_and_returns_prev_result() -> None:
    be = FakeBackend()
    code, out = call(be, env("ADD"), stdin())
    assert code == 0 and out is not None
    assert out["ips"] == PREV["ips"] and out["cniVersion"] == "1.0.0"
    assert [m.docker_format() for m in be.elements[OWNER]] == ["0.0.0.0:8080->80/tcp"]
    assert be.bridges[OWNER] == "pwtcni0"
    assert be.subnets == [ipaddress.ip_network("198.18.200.0/24")]
    # Reservation on by default: one placeholder (no relay target) per mapping.
    assert be.held[OWNER][2] == (Binding("tcp", "0.0.0.0", 8080),)


def test_add_without_mappings_is_passthrough() -> None:
    be = FakeBackend()
    code, out = call(be, env("ADD"), stdin([]))
    assert code == 0 and out is not None and out["interfaces"] == PREV["interfaces"]
    assert be.elements == {} and be.held == {}


def test_reserve_off_holds_nothing_and_checks_host_listeners() -> None:
    be = FakeBackend()
    assert call(be, env("ADD"), stdin(reserveHostPort=False))[0] == 0
    assert OWNER in be.elements and be.held == {}
    be2 = FakeBackend()
    be2.host_busy.add(("tcp", 8080))
    code, out = call(be2, env("ADD"), stdin(reserveHostPort=False))
    assert code == 1 and out is not None and out["code"] == p.E_PORT_IN_USE
    assert "0.0.0.0:8080/tcp" in str(out["msg"]) and "http.server" in str(out["msg"])
    assert be2.elements == {}


def test_udp_flushes_conntrack() -> None:
    be = FakeBackend()
    call(be, env("ADD"), stdin([{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]))
    assert be.flushed == [("udp", 5353)]


def test_conflict_with_other_container_leaves_nothing() -> None:
    be = FakeBackend()
    assert call(be, env("ADD", cid="other1"), stdin())[0] == 0
    code, out = call(be, env("ADD"), stdin([{"hostPort": 8080, "containerPort": 81, "hostIP": "127.0.0.1"}]))
    assert code == 1 and out is not None
    assert out["code"] == p.E_PORT_IN_USE and out["code"] >= 100
    assert "127.0.0.1:8080/tcp" in str(out["msg"]) and "container other1 (eth0)" in str(out["msg"])
    assert set(be.elements) == {p.owner_tag("other1", "eth0")}
    assert set(be.held) == {p.owner_tag("other1", "eth0")}


def test_same_port_other_protocol_or_family_is_no_conflict() -> None:
    be = FakeBackend()
    call(be, env("ADD", cid="other1"), stdin())
    assert call(be, env("ADD"), stdin([{"hostPort": 8080, "containerPort": 80, "protocol": "udp"}]))[0] == 0


def test_holder_failure_rolls_back() -> None:
    be = FakeBackend()
    be.fail_holder = "0.0.0.0:8080/tcp"
    code, out = call(be, env("ADD"), stdin())
    assert code == 1 and out is not None and out["code"] == p.E_PORT_IN_USE
    assert "nginx" in str(out["msg"])
    assert be.elements == {} and be.held == {}


def test_publish_failure_rolls_back_holder() -> None:
    be = FakeBackend()
    be.fail_publish = True
    code, out = call(be, env("ADD"), stdin())
    assert code == 1 and out is not None and out["code"] == p.E_KERNEL
    assert be.elements == {} and be.held == {}


def test_missing_netns_is_code_3_and_leaves_nothing() -> None:
    be = FakeBackend()
    code, out = call(be, env("ADD", netns="/run/netns/gone"), stdin())
    assert code == 1 and out is not None and out["code"] == p.E_UNKNOWN_CONTAINER
    assert "/run/netns/gone" in str(out["msg"])
    assert be.elements == {} and be.held == {}


def test_repeated_add_replaces() -> None:
    be = FakeBackend()
    call(be, env("ADD"), stdin())
    assert call(be, env("ADD"), stdin([{"hostPort": 9090, "containerPort": 80}]))[0] == 0
    assert [m.host_port for m in be.elements[OWNER]] == [9090]


def test_del_is_idempotent_and_needs_no_prev_result() -> None:
    be = FakeBackend()
    call(be, env("ADD"), stdin())
    call(be, env("ADD", cid="keep"), stdin([{"hostPort": 9000, "containerPort": 80}]))
    for _ in range(2):
        code, out = call(be, env("DEL", netns=""), stdin(prevResult=None))
        assert (code, out) == (0, None)
    assert set(be.elements) == {p.owner_tag("keep", "eth0")}
    assert set(be.held) == {p.owner_tag("keep", "eth0")}


def test_check() -> None:
    be = FakeBackend()
    call(be, env("ADD"), stdin())
    assert call(be, env("CHECK"), stdin()) == (0, None)
    be.elements[OWNER] = []
    code, out = call(be, env("CHECK"), stdin())
    assert code == 1 and out is not None and out["code"] == p.E_CHECK_FAILED
    assert "0.0.0.0:8080->80/tcp" in str(out["msg"])
    call(be, env("ADD"), stdin())
    be.held.clear()
    code, out = call(be, env("CHECK"), stdin())
    assert out is not None and "holder process" in str(out["msg"])


def test_check_needs_prev_result() -> None:
    code, out = call(FakeBackend(), env("CHECK"), stdin(prevResult=None))
    assert code == 1 and out is not None and out["code"] == p.E_INVALID_CONFIG


def test_gc_drops_only_invalid_attachments_of_this_network() -> None:
    be = FakeBackend()
    for cid in ("alive", "gone"):
        call(be, env("ADD", cid=cid), stdin([{"hostPort": 8000 + len(cid), "containerPort": 80}]))
    call(be, env("ADD", cid="elsewhere"), stdin([{"hostPort": 9999, "containerPort": 80}], name="othernet"))
    be.elements["pw:0123456789ab"] = []  # a portwright sandbox: never GC's business
    gc = stdin(version="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "alive", "ifname": "eth0"}]})
    assert call(be, {"CNI_COMMAND": "GC", "CNI_PATH": "/usr/lib/cni"}, gc) == (0, None)
    assert set(be.elements) == {p.owner_tag("alive", "eth0"), p.owner_tag("elsewhere", "eth0"),
                                "pw:0123456789ab"}
    assert p.owner_tag("gone", "eth0") not in be.held


def test_gc_selection_pure() -> None:
    owners = {"cni:a:eth0", "cni:b:eth0", "cni:c:eth1", "pw:abc", "h:deadbeef"}
    holders = {"cni:c:eth1": (1, "net2"), "cni:d:eth0": (2, "net1")}
    got = plugin.gc_targets([p.Attachment("a", "eth0")], "net1", owners, holders)
    assert got == ["cni:b:eth0", "cni:d:eth0"]


def test_gc_needs_valid_attachments_and_1_1() -> None:
    code, out = call(FakeBackend(), {"CNI_COMMAND": "GC"}, stdin(version="1.1.0"))
    assert out is not None and out["code"] == p.E_INVALID_CONFIG
    code, out = call(FakeBackend(), {"CNI_COMMAND": "GC"},
                     stdin(version="1.0.0", **{"cni.dev/valid-attachments": []}))
    assert out is not None and out["code"] == p.E_INCOMPATIBLE_VERSION


def test_status() -> None:
    be = FakeBackend()
    assert call(be, {"CNI_COMMAND": "STATUS"}, stdin(version="1.1.0")) == (0, None)
    be.status_problem = "nft is not available; install it with: apt-get install nftables"
    code, out = call(be, {"CNI_COMMAND": "STATUS"}, stdin(version="1.1.0"))
    assert code == 1 and out is not None and out["code"] == p.E_PLUGIN_NOT_AVAILABLE


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_version_command(version: str) -> None:
    code, out = call(FakeBackend(), {"CNI_COMMAND": "VERSION"}, json.dumps({"cniVersion": version}).encode())
    assert code == 0 and out == {"cniVersion": version, "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


def test_version_without_stdin() -> None:
    code, out = call(FakeBackend(), {"CNI_COMMAND": "VERSION"}, b"")
    assert code == 0 and out is not None and out["cniVersion"] == "1.1.0"


@pytest.mark.parametrize("e,data,code", [
    ({"CNI_COMMAND": "BOGUS"}, stdin(), p.E_INVALID_ENV),
    (env("ADD"), b"{oops", p.E_DECODE),
    (env("ADD"), stdin(version="0.2.0"), p.E_INCOMPATIBLE_VERSION),
    (env("ADD"), stdin(name=None), p.E_INVALID_CONFIG),
])
def test_errors_are_spec_json(e: dict[str, str], data: bytes, code: int) -> None:
    be = FakeBackend()
    rc, out = call(be, e, data)
    assert rc == 1 and out is not None
    assert out["code"] == code and set(out) <= {"cniVersion", "code", "msg", "details"}
    assert isinstance(out["msg"], str) and out["msg"] and "\n" not in out["msg"]
    assert be.elements == {} and be.held == {}


def test_unexpected_exception_becomes_error_json() -> None:
    def boom() -> FakeBackend:
        raise RuntimeError("kaput")
    rc, out = plugin.run(env("ADD"), stdin(), boom)
    assert rc == 1 and json.loads(out)["code"] == p.E_INTERNAL


def test_ipv6_loopback_is_relayed_and_udp_refused() -> None:
    be = FakeBackend()
    code, _ = call(be, env("ADD"), stdin([{"hostPort": 8081, "containerPort": 80, "hostIP": "::1"}]))
    assert code == 0
    assert be.held[OWNER][2] == (Binding("tcp", "::1", 8081, "198.18.200.5", 80),)
    assert OWNER not in be.elements or be.elements[OWNER] == []
    code, out = call(FakeBackend(), env("ADD"),
                     stdin([{"hostPort": 8081, "containerPort": 80, "hostIP": "::1", "protocol": "udp"}]))
    assert code == 1 and out is not None and "relays only TCP" in str(out["msg"])
