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
from portwright.owners import cni_legacy_owner, cni_owner

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

    # Elements and rules are keyed by the nft comment they would carry (rules.owner_tag, which
    # hashes a tag longer than nft's comment limit), as NftBackend.published reads them back.
    def published(self) -> dict[str, list[Mapping]]:
        out = {k: list(v) for k, v in self.elements.items()}
        for k in self.bridges:
            out.setdefault(k, [])
        return out

    def publish(self, owner: str, mappings: Sequence[Mapping], bridge: str | None,
                subnets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network], snat: bool) -> None:
        self.subnets = list(subnets)
        self.elements[rules.owner_tag(owner)] = list(mappings)
        if self.fail_publish:
            raise p.CniError(p.E_KERNEL, "nft said no")
        if bridge and snat:
            self.bridges[rules.owner_tag(owner)] = bridge

    def unpublish(self, owner: str) -> None:
        self.elements.pop(rules.owner_tag(owner), None)
        self.bridges.pop(rules.owner_tag(owner), None)

    def flush_conntrack(self, proto: str, port: int) -> None:
        self.flushed.append((proto, port))

    def check_bridge(self, owner: str, bridge: str, snat: bool) -> str | None:
        return None if not snat or rules.owner_tag(owner) in self.bridges else f"rules of {owner} on {bridge} missing"

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


OWNER = cni_owner(CID, "eth0", "pwnet")


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
    assert set(be.elements) == {cni_owner("other1", "eth0", "pwnet")}
    assert set(be.held) == {cni_owner("other1", "eth0", "pwnet")}


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
    assert set(be.elements) == {cni_owner("keep", "eth0", "pwnet")}
    assert set(be.held) == {cni_owner("keep", "eth0", "pwnet")}


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
    assert set(be.elements) == {cni_owner("alive", "eth0", "pwnet"), cni_owner("elsewhere", "eth0", "othernet"),
                                "pw:0123456789ab"}
    assert cni_owner("gone", "eth0", "pwnet") not in be.held


def gc(be: FakeBackend, network: str, valid: Sequence[str]) -> tuple[int, dict[str, object] | None]:
    """GC of ``network`` keeping the eth0 attachments of the container IDs in ``valid``."""
    data = stdin(version="1.1.0", name=network,
                 **{"cni.dev/valid-attachments": [{"containerID": c, "ifname": "eth0"} for c in valid]})
    return call(be, {"CNI_COMMAND": "GC", "CNI_PATH": "/usr/lib/cni"}, data)


def host_ports(be: FakeBackend) -> set[int]:
    return {m.host_port for ms in be.elements.values() for m in ms}


def test_gc_of_one_network_keeps_other_networks_attachments_without_holder() -> None:
    # Podman's setting: no holder, so nothing but the tag says which network an attachment is on.
    be = FakeBackend()
    ports = {"net1": (8001, 8002), "net2": (9001, 9002)}
    for net, (pa, pb) in ports.items():
        for cid, port in ((f"{net}a", pa), (f"{net}b", pb)):
            mapping = [{"hostPort": port, "containerPort": 80}]
            assert call(be, env("ADD", cid=cid), stdin(mapping, name=net, reserveHostPort=False))[0] == 0
    be.elements["pw:0123456789ab"] = []  # a portwright sandbox: never GC's business
    assert be.held == {} and host_ports(be) == {8001, 8002, 9001, 9002}
    assert gc(be, "net1", []) == (0, None)
    assert host_ports(be) == {9001, 9002} and "pw:0123456789ab" in be.elements
    assert gc(be, "net2", ["net2b"]) == (0, None)
    assert host_ports(be) == {9002}


@pytest.mark.parametrize("reserve", [False, True])
def test_gc_collects_stale_long_container_id_and_keeps_valid_one(reserve: bool) -> None:
    stale, valid = "a" * 200, "b" * 199 + "c"
    be = FakeBackend()
    for cid, port in ((stale, 8001), (valid, 8002)):
        mapping = [{"hostPort": port, "containerPort": 80}]
        assert call(be, env("ADD", cid=cid), stdin(mapping, reserveHostPort=reserve))[0] == 0
    assert host_ports(be) == {8001, 8002}
    assert gc(be, "pwnet", [valid]) == (0, None)
    assert host_ports(be) == {8002}
    assert len(be.held) == (1 if reserve else 0)
    assert gc(be, "othernet", []) == (0, None)  # another network's GC leaves it alone
    assert host_ports(be) == {8002}
    assert call(be, env("DEL", cid=valid, netns=""), stdin(prevResult=None)) == (0, None)
    assert be.elements == {} and be.held == {}


def test_gc_selection_pure() -> None:
    t = cni_owner
    owners = {t("a", "eth0", "net1"), t("b", "eth0", "net1"), t("c", "eth1", "net2"), t("e", "eth0", "net2"),
              "cni:legacy1:eth0", "cni:legacy2:eth0", "cni:legacy3:eth0", "cni:legacy4:eth0",
              "pw:abc", "h:deadbeef"}
    holders = {t("c", "eth1", "net2"): (1, "net2"), t("d", "eth0", "net1"): (2, "net1"),
               "cni:legacy1:eth0": (3, "net1"), "cni:legacy2:eth0": (4, "net2"), "cni:legacy3:eth0": (5, "net1")}
    valid = [p.Attachment("a", "eth0"), p.Attachment("legacy3", "eth0")]
    got = plugin.gc_targets(valid, "net1", owners, holders)
    # net1's stale ones (held or not) and the legacy tag whose holder names net1; never net2's,
    # a valid legacy attachment, a legacy tag with no holder (any network's), pw: or h: tags.
    assert got == sorted([t("b", "eth0", "net1"), t("d", "eth0", "net1"), "cni:legacy1:eth0"])


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


def _legacy_attachment(be: FakeBackend, cid: str, port: int, network: str | None) -> str:
    """What the previous portwright-cni left for an attachment: ``cni:<cid>:<ifname>`` elements
    (hashed by the firewall when too long) and, if ``network``, a holder naming it."""
    legacy = cni_legacy_owner(cid, "eth0")
    be.elements[rules.owner_tag(legacy)] = [Mapping("tcp", ipaddress.ip_address("0.0.0.0"), port,
                                                    ipaddress.ip_address("198.18.200.5"), 80)]
    if network is not None:
        be.held[legacy] = (4242, network, (Binding("tcp", "0.0.0.0", port),))
    return legacy


@pytest.mark.parametrize("cid", ["short1", "l" * 200])
def test_del_and_add_remove_what_the_previous_version_left(cid: str) -> None:
    be = FakeBackend()
    _legacy_attachment(be, cid, 8080, "pwnet")
    _legacy_attachment(be, "bystander", 9000, None)
    assert call(be, env("DEL", cid=cid, netns=""), stdin(prevResult=None)) == (0, None)
    assert host_ports(be) == {9000} and be.held == {}
    _legacy_attachment(be, cid, 8080, "pwnet")
    assert call(be, env("ADD", cid=cid), stdin())[0] == 0  # no conflict with its own old self
    assert set(be.held) == {cni_owner(cid, "eth0", "pwnet")}
    assert set(be.elements) == {rules.owner_tag(cni_legacy_owner("bystander", "eth0")),
                                cni_owner(cid, "eth0", "pwnet")}


@pytest.mark.parametrize("cid", ["short1", "l" * 200])
def test_check_accepts_what_the_previous_version_added(cid: str) -> None:
    be = FakeBackend()
    _legacy_attachment(be, cid, 8080, "pwnet")
    be.bridges[rules.owner_tag(cni_legacy_owner(cid, "eth0"))] = "pwtcni0"
    assert call(be, env("CHECK", cid=cid), stdin()) == (0, None)
    be.held.clear()
    code, out = call(be, env("CHECK", cid=cid), stdin())
    assert code == 1 and out is not None and "holder process" in str(out["msg"])


def test_gc_with_tags_of_the_previous_version() -> None:
    be = FakeBackend()
    _legacy_attachment(be, "heldhere", 8001, "pwnet")
    _legacy_attachment(be, "heldthere", 8002, "othernet")
    _legacy_attachment(be, "unheld", 8003, None)
    _legacy_attachment(be, "l" * 200, 8004, "pwnet")  # hashed in nft, whole in the holder
    _legacy_attachment(be, "m" * 200, 8005, None)  # only an h: tag is left: not recognisable
    assert gc(be, "pwnet", []) == (0, None)
    assert host_ports(be) == {8002, 8003, 8005}
    assert [v[1] for v in be.held.values()] == ["othernet"]


def test_conflict_names_container_and_network() -> None:
    be = FakeBackend()
    assert call(be, env("ADD", cid="x" * 200), stdin(name="net-a"))[0] == 0
    code, out = call(be, env("ADD"), stdin())
    assert code == 1 and out is not None and out["code"] == p.E_PORT_IN_USE
    assert f"container {'x' * 12} (eth0) on network net-a" in str(out["msg"])
