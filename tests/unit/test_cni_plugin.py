"""Unit tests for the CNI commands over the real kernel backend, without root.

``kernel.KernelBackend`` runs here as in the plugin, handed the in-memory firewall
(``firewall.fake.FakeBackend``, a real nft table in memory) and a fake host (bridges, sysctls,
DOCKER-USER, holder processes, host sockets). So the elements and masquerade rules an ADD leaves,
what DEL and GC remove, and what CHECK reads back are the ones the kernel would hold.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Sequence
from typing import Any

import pytest

from portwright.cni import plugin
from portwright.cni import protocol as p
from portwright.cni.holder import Binding, told_message
from portwright.cni.kernel import KernelBackend
from portwright.errors import KernelError, MissingTool, PortInUse
from portwright.firewall import rules
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend, touches
from portwright.model import Mapping, Network
from portwright.owners import cni_legacy_owner, cni_owner, nft_comment

CID = "c0ffee" * 10 + "beef"
BRIDGE = "pwtcni0"
SUBNET = ipaddress.ip_network("198.18.200.0/24")
PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": BRIDGE}, {"name": "vethx"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
    "ips": [{"interface": 2, "address": "198.18.200.5/24", "gateway": "198.18.200.1"}],
}


class FakeHost:
    """The host side of the CNI backend, in memory; can be told to fail."""

    def __init__(self) -> None:
        self.bridges = {BRIDGE}  # links that are bridges
        self.sysctl: dict[str, str] = {}  # bridge -> route_localnet
        self.docker_user: list[str] = []  # DOCKER-USER accepts, in order
        self.forgets = 0
        self.brif: dict[str, list[str]] = {BRIDGE: ["vethx"]}  # bridge -> its ports
        self.fail_forget = False
        self.held: dict[str, tuple[int, str, tuple[Binding, ...]]] = {}
        self.netns = {"/run/netns/x"}
        self.host_busy: set[tuple[str, int]] = set()
        self.fail_holder: str | None = None
        self.fail_sysctl = False
        self.rewrites: dict[str, tuple[Mapping, ...]] = {}  # owner -> connect-time rewrites (ebpf)
        self.told: dict[str, bytes] = {}  # owner -> what ADD told its holder it published

    def rewrite(self, owner: str, mappings: Sequence[Mapping]) -> None:
        if mappings:
            self.rewrites[owner] = tuple(mappings)

    def unrewrite(self, owner: str) -> None:
        self.rewrites.pop(owner, None)

    def is_bridge(self, name: str) -> bool:
        return name in self.bridges

    def route_localnet(self, bridge: str) -> str | None:
        return self.sysctl.get(bridge, "0")

    def enable_route_localnet(self, bridge: str) -> None:
        if self.fail_sysctl:
            raise KernelError(f"sysctl net.ipv4.conf.{bridge}.route_localnet=1", "injected failure")
        self.sysctl[bridge] = "1"

    def docker_user_accept(self, bridge: str) -> None:
        self.docker_user.append(bridge)

    def docker_user_forget_missing(self) -> None:
        self.forgets += 1

    def bridge_ports(self, bridge: str) -> list[str] | None:
        return self.brif.get(bridge)

    def docker_user_forget(self, bridge: str) -> None:
        if self.fail_forget:
            raise KernelError(f"iptables -D DOCKER-USER -i {bridge}", "injected failure")
        self.docker_user = [b for b in self.docker_user if b != bridge]

    def start_holder(self, owner: str, network: str, bindings: Sequence[Binding]) -> None:
        if self.fail_holder:
            raise PortInUse(self.fail_holder, "pid 1 (nginx: nginx)")
        self.held[owner] = (4242, network, tuple(bindings))

    def tell_holder(self, owner: str, nat: Sequence[Mapping], extra_rules: Sequence[dict[str, Any]]) -> None:
        if owner in self.held:
            self.told[owner] = told_message(nat, extra_rules)

    def holders(self) -> dict[str, tuple[int, str]]:
        return {k: (v[0], v[1]) for k, v in self.held.items()}

    def stop_holder(self, owner: str) -> None:
        self.held.pop(owner, None)

    def check_host_port(self, m: Mapping) -> None:
        if (m.proto, m.host_port) in self.host_busy:
            raise PortInUse(f"{m.host_binding()}/{m.proto}", "pid 7 (python3: http.server)")

    def netns_exists(self, path: str) -> bool:
        return path in self.netns


class Rig:
    """The in-memory firewall and host that every invocation's real backend works on, with
    views for the assertions."""

    def __init__(self) -> None:
        self.fake = FakeBackend()
        self.fake_host = FakeHost()
        self.fw = Firewall(self.fake)

    def backend(self) -> KernelBackend:
        """A fresh backend, as each plugin invocation (a new process) gets one."""
        return KernelBackend(self.fw, self.fake_host)  # type: ignore[arg-type]

    @property
    def elements(self) -> dict[str, list[Mapping]]:
        """nft comment -> the NAT mappings it holds in the table."""
        out: dict[str, list[Mapping]] = {}
        for e in self.fw.published():
            out.setdefault(str(e.owner), []).append(e.mapping())
        return out

    @property
    def held(self) -> dict[str, tuple[int, str, tuple[Binding, ...]]]:
        return self.fake_host.held

    def masquerade(self, owner: str) -> list[Any]:
        """The expressions of the owner's rules (the masquerade of a foreign bridge)."""
        return [r["expr"] for r in rules.owner_rules(self.fw.table(), owner)]


def masquerade_for(owner: str, mappings: Sequence[Mapping], bridge: str = BRIDGE) -> list[Any]:
    return [
        c["add"]["rule"]["expr"] for c in rules.bridge_masquerade_commands(owner, bridge, mappings, [SUBNET])
    ]


def env(cmd: str, cid: str = CID, ifname: str = "eth0", netns: str = "/run/netns/x") -> dict[str, str]:
    return {
        "CNI_COMMAND": cmd,
        "CNI_CONTAINERID": cid,
        "CNI_IFNAME": ifname,
        "CNI_NETNS": netns,
        "CNI_PATH": "/usr/lib/cni",
    }


def stdin(pms: list[dict[str, object]] | None = None, version: str = "1.0.0", **kw: object) -> bytes:
    c: dict[str, object] = {
        "cniVersion": version,
        "name": "pwnet",
        "type": "portwright-cni",
        "prevResult": PREV,
        "runtimeConfig": {
            "portMappings": pms
            if pms is not None
            else [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
        },
    }
    c.update(kw)
    return json.dumps({k: v for k, v in c.items() if v is not None}).encode()


def call(be: Rig, e: dict[str, str], data: bytes) -> tuple[int, dict[str, object] | None]:
    code, out = plugin.run(e, data, be.backend)
    return code, (json.loads(out) if out else None)


OWNER = cni_owner(CID, "eth0", "pwnet")


def test_add_publishes_and_returns_prev_result() -> None:
    be = Rig()
    code, out = call(be, env("ADD"), stdin())
    assert code == 0 and out is not None
    assert out["ips"] == PREV["ips"] and out["cniVersion"] == "1.0.0"
    assert [m.docker_format() for m in be.elements[OWNER]] == ["0.0.0.0:8080->80/tcp"]
    # A bridge portwright did not create: its own masquerade rules, route_localnet, DOCKER-USER.
    assert be.masquerade(OWNER) == masquerade_for(OWNER, be.elements[OWNER])
    assert be.fake_host.sysctl == {BRIDGE: "1"} and be.fake_host.docker_user == [BRIDGE]
    # Elements and rules went in as one transaction (after the base), UDP had nothing to flush.
    assert len(be.fake.transactions) == 2 and be.fake.conntrack_ports == []
    # Reservation on by default: one placeholder (no relay target) per mapping.
    assert be.held[OWNER][2] == (Binding("tcp", "0.0.0.0", 8080),)


def test_add_on_a_portwright_bridge_adds_no_rules_of_its_own() -> None:
    be = Rig()
    be.fw.add_network(
        Network(
            name="pw0",
            bridge=BRIDGE,
            subnet4=ipaddress.IPv4Network(SUBNET),
            gateway4=ipaddress.IPv4Address("198.18.200.1"),
        )
    )
    assert call(be, env("ADD"), stdin())[0] == 0
    assert len(be.elements[OWNER]) == 1 and be.masquerade(OWNER) == []  # the network's rules serve it
    assert be.fake_host.sysctl == {} and be.fake_host.docker_user == []
    assert call(be, env("CHECK"), stdin()) == (0, None)


def test_add_without_snat_adds_no_masquerade() -> None:
    be = Rig()
    assert call(be, env("ADD"), stdin(snat=False))[0] == 0
    assert be.masquerade(OWNER) == [] and be.fake_host.sysctl == {} and be.fake_host.docker_user == [BRIDGE]
    assert call(be, env("CHECK"), stdin(snat=False)) == (0, None)


def test_add_without_mappings_is_passthrough() -> None:
    be = Rig()
    code, out = call(be, env("ADD"), stdin([]))
    assert code == 0 and out is not None and out["interfaces"] == PREV["interfaces"]
    assert be.elements == {} and be.held == {}


def test_reserve_off_holds_nothing_and_checks_host_listeners() -> None:
    be = Rig()
    assert call(be, env("ADD"), stdin(reserveHostPort=False))[0] == 0
    assert OWNER in be.elements and be.held == {}
    be2 = Rig()
    be2.fake_host.host_busy.add(("tcp", 8080))
    code, out = call(be2, env("ADD"), stdin(reserveHostPort=False))
    assert code == 1 and out is not None and out["code"] == p.E_PORT_IN_USE
    assert "0.0.0.0:8080/tcp" in str(out["msg"]) and "http.server" in str(out["msg"])
    assert be2.elements == {}


def test_udp_flushes_conntrack() -> None:
    be = Rig()
    call(be, env("ADD"), stdin([{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]))
    assert be.fake.conntrack_ports == [("udp", (5353,))]
    assert be.fake.calls[-1] == "conntrack udp 5353"  # once every rule of the attachment is in


def test_conflict_with_other_container_leaves_nothing() -> None:
    be = Rig()
    assert call(be, env("ADD", cid="other1"), stdin())[0] == 0
    code, out = call(be, env("ADD"), stdin([{"hostPort": 8080, "containerPort": 81, "hostIP": "127.0.0.1"}]))
    assert code == 1 and out is not None
    assert out["code"] == p.E_PORT_IN_USE and out["code"] >= 100
    assert "127.0.0.1:8080/tcp" in str(out["msg"]) and "container other1 (eth0)" in str(out["msg"])
    assert set(be.elements) == {cni_owner("other1", "eth0", "pwnet")}
    assert set(be.held) == {cni_owner("other1", "eth0", "pwnet")}


def test_same_port_other_protocol_or_family_is_no_conflict() -> None:
    be = Rig()
    call(be, env("ADD", cid="other1"), stdin())
    assert call(be, env("ADD"), stdin([{"hostPort": 8080, "containerPort": 80, "protocol": "udp"}]))[0] == 0


def test_holder_failure_rolls_back() -> None:
    be = Rig()
    be.fake_host.fail_holder = "0.0.0.0:8080/tcp"
    code, out = call(be, env("ADD"), stdin())
    assert code == 1 and out is not None and out["code"] == p.E_PORT_IN_USE
    assert "nginx" in str(out["msg"])
    assert be.elements == {} and be.held == {}


def test_publish_failure_rolls_back_holder() -> None:
    be = Rig()
    be.fake.fail_next(touches("element", "add"))
    code, out = call(be, env("ADD"), stdin())
    assert (
        code == 1 and out is not None and out["code"] == p.E_KERNEL and "injected failure" in str(out["msg"])
    )
    assert be.elements == {} and be.held == {} and be.masquerade(OWNER) == []


def test_failure_after_the_rules_are_in_removes_them() -> None:
    """A step that fails once elements and rules are in the table (route_localnet here) leaves
    no element, no rule and no holder behind."""
    be = Rig()
    be.fake_host.fail_sysctl = True
    code, out = call(be, env("ADD"), stdin())
    assert code == 1 and out is not None and out["code"] == p.E_KERNEL and "route_localnet" in str(out["msg"])
    assert be.elements == {} and be.masquerade(OWNER) == [] and be.held == {}
    assert rules.owners(be.fw.table()) == set()


@pytest.mark.parametrize(
    "error,code",
    [
        (MissingTool("nft", "nftables"), p.E_MISSING_TOOL),
        (KernelError("nft -j -f -", "Operation not supported"), p.E_KERNEL),
    ],
)
def test_kernel_errors_become_cni_codes(error: Exception, code: int) -> None:
    be = Rig()
    be.fake.fail_next(1, error=error)  # type: ignore[arg-type]
    rc, out = call(be, env("ADD"), stdin())
    assert rc == 1 and out is not None and out["code"] == code and be.held == {}


def test_missing_netns_is_code_3_and_leaves_nothing() -> None:
    be = Rig()
    code, out = call(be, env("ADD", netns="/run/netns/gone"), stdin())
    assert code == 1 and out is not None and out["code"] == p.E_UNKNOWN_CONTAINER
    assert "/run/netns/gone" in str(out["msg"])
    assert be.elements == {} and be.held == {}


def test_repeated_add_replaces() -> None:
    be = Rig()
    call(be, env("ADD"), stdin())
    assert call(be, env("ADD"), stdin([{"hostPort": 9090, "containerPort": 80}]))[0] == 0
    assert [m.host_port for m in be.elements[OWNER]] == [9090]


def test_del_is_idempotent_and_needs_no_prev_result() -> None:
    be = Rig()
    call(be, env("ADD"), stdin())
    call(be, env("ADD", cid="keep"), stdin([{"hostPort": 9000, "containerPort": 80}]))
    for _ in range(2):
        code, out = call(be, env("DEL", netns=""), stdin(prevResult=None))
        assert (code, out) == (0, None)
    assert set(be.elements) == {cni_owner("keep", "eth0", "pwnet")}
    assert set(be.held) == {cni_owner("keep", "eth0", "pwnet")}


def test_local_clients_are_rewritten_in_both_families_and_del_removes_it() -> None:
    """Issue 11: an IPv4-only container gets a [::] rewrite too, so localhost -> ::1 works with
    no holder and no relay (reserveHostPort false, as Podman needs)."""
    be = Rig()
    assert call(be, env("ADD"), stdin(reserveHostPort=False))[0] == 0
    assert be.held == {}
    got = sorted(m.docker_format() for m in be.fake_host.rewrites[OWNER])
    assert got == ["0.0.0.0:8080->80/tcp", "[::]:8080->80/tcp"]
    assert {str(m.container_ip) for m in be.fake_host.rewrites[OWNER]} == {"198.18.200.5"}
    call(be, env("DEL"), stdin())
    assert be.fake_host.rewrites == {}


def test_check() -> None:
    be = Rig()
    call(be, env("ADD"), stdin())
    assert call(be, env("CHECK"), stdin()) == (0, None)
    # someone deleted the element (but not the rules)
    be.fake.apply([c for c in rules.unpublish_commands(OWNER, be.fw.table()) if "element" in c["delete"]])
    code, out = call(be, env("CHECK"), stdin())
    assert code == 1 and out is not None and out["code"] == p.E_CHECK_FAILED
    assert "0.0.0.0:8080->80/tcp" in str(out["msg"])
    call(be, env("ADD"), stdin())
    be.fake.apply(rules.remove_owner_rules_commands(OWNER, be.fw.table()))  # and now the rules
    code, out = call(be, env("CHECK"), stdin())
    assert out is not None and "masquerade rules" in str(out["msg"])
    call(be, env("ADD"), stdin())
    be.fake_host.sysctl[BRIDGE] = "0"
    code, out = call(be, env("CHECK"), stdin())
    assert out is not None and "route_localnet is off" in str(out["msg"])
    call(be, env("ADD"), stdin())
    be.held.clear()
    code, out = call(be, env("CHECK"), stdin())
    assert out is not None and "holder process" in str(out["msg"])


def test_check_needs_prev_result() -> None:
    code, out = call(Rig(), env("CHECK"), stdin(prevResult=None))
    assert code == 1 and out is not None and out["code"] == p.E_INVALID_CONFIG


def test_gc_drops_only_invalid_attachments_of_this_network() -> None:
    be = Rig()
    for cid in ("alive", "gone"):
        call(be, env("ADD", cid=cid), stdin([{"hostPort": 8000 + len(cid), "containerPort": 80}]))
    call(be, env("ADD", cid="elsewhere"), stdin([{"hostPort": 9999, "containerPort": 80}], name="othernet"))
    sandbox(be)
    gc = stdin(version="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "alive", "ifname": "eth0"}]})
    assert call(be, {"CNI_COMMAND": "GC", "CNI_PATH": "/usr/lib/cni"}, gc) == (0, None)
    assert set(be.elements) == {
        cni_owner("alive", "eth0", "pwnet"),
        cni_owner("elsewhere", "eth0", "othernet"),
        "pw:0123456789ab",
    }
    assert cni_owner("gone", "eth0", "pwnet") not in be.held


def gc(be: Rig, network: str, valid: Sequence[str]) -> tuple[int, dict[str, object] | None]:
    """GC of ``network`` keeping the eth0 attachments of the container IDs in ``valid``."""
    data = stdin(
        version="1.1.0",
        name=network,
        **{"cni.dev/valid-attachments": [{"containerID": c, "ifname": "eth0"} for c in valid]},
    )
    return call(be, {"CNI_COMMAND": "GC", "CNI_PATH": "/usr/lib/cni"}, data)


def host_ports(be: Rig) -> set[int]:
    """Host ports of everything but the bystander sandbox."""
    return {m.host_port for tag, ms in be.elements.items() if tag != SANDBOX for m in ms}


SANDBOX = "pw:0123456789ab"


def sandbox(be: Rig) -> None:
    """A portwright sandbox in the same table: never GC's business."""
    be.fw.publish(
        SANDBOX,
        [Mapping("tcp", ipaddress.ip_address("0.0.0.0"), 7000, ipaddress.ip_address("198.18.201.2"), 80)],
    )


def test_gc_of_one_network_keeps_other_networks_attachments_without_holder() -> None:
    # Podman's setting: no holder, so nothing but the tag says which network an attachment is on.
    be = Rig()
    ports = {"net1": (8001, 8002), "net2": (9001, 9002)}
    for net, (pa, pb) in ports.items():
        for cid, port in ((f"{net}a", pa), (f"{net}b", pb)):
            mapping = [{"hostPort": port, "containerPort": 80}]
            assert call(be, env("ADD", cid=cid), stdin(mapping, name=net, reserveHostPort=False))[0] == 0
    sandbox(be)
    assert be.held == {} and host_ports(be) == {8001, 8002, 9001, 9002}
    assert gc(be, "net1", []) == (0, None)
    assert host_ports(be) == {9001, 9002} and SANDBOX in be.elements
    assert gc(be, "net2", ["net2b"]) == (0, None)
    assert host_ports(be) == {9002}


@pytest.mark.parametrize("reserve", [False, True])
def test_gc_collects_stale_long_container_id_and_keeps_valid_one(reserve: bool) -> None:
    stale, valid = "a" * 200, "b" * 199 + "c"
    be = Rig()
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
    assert be.elements == {} and be.held == {} and rules.owners(be.fw.table()) == set()


def test_gc_selection_pure() -> None:
    t = cni_owner
    owners = {
        t("a", "eth0", "net1"),
        t("b", "eth0", "net1"),
        t("c", "eth1", "net2"),
        t("e", "eth0", "net2"),
        "cni:legacy1:eth0",
        "cni:legacy2:eth0",
        "cni:legacy3:eth0",
        "cni:legacy4:eth0",
        "pw:abc",
        "h:deadbeef",
    }
    holders = {
        t("c", "eth1", "net2"): (1, "net2"),
        t("d", "eth0", "net1"): (2, "net1"),
        "cni:legacy1:eth0": (3, "net1"),
        "cni:legacy2:eth0": (4, "net2"),
        "cni:legacy3:eth0": (5, "net1"),
    }
    valid = [p.Attachment("a", "eth0"), p.Attachment("legacy3", "eth0")]
    got = plugin.gc_targets(valid, "net1", owners, holders)
    # net1's stale ones (held or not) and the legacy tag whose holder names net1; never net2's,
    # a valid legacy attachment, a legacy tag with no holder (any network's), pw: or h: tags.
    assert got == sorted([t("b", "eth0", "net1"), t("d", "eth0", "net1"), "cni:legacy1:eth0"])


def test_gc_needs_valid_attachments_and_1_1() -> None:
    code, out = call(Rig(), {"CNI_COMMAND": "GC"}, stdin(version="1.1.0"))
    assert out is not None and out["code"] == p.E_INVALID_CONFIG
    code, out = call(
        Rig(), {"CNI_COMMAND": "GC"}, stdin(version="1.0.0", **{"cni.dev/valid-attachments": []})
    )
    assert out is not None and out["code"] == p.E_INCOMPATIBLE_VERSION


def test_status() -> None:
    be = Rig()
    assert call(be, {"CNI_COMMAND": "STATUS"}, stdin(version="1.1.0")) == (0, None)
    be.fake.fail_next(1, error=MissingTool("nft", "nftables"))
    code, out = call(be, {"CNI_COMMAND": "STATUS"}, stdin(version="1.1.0"))
    assert code == 1 and out is not None and out["code"] == p.E_PLUGIN_NOT_AVAILABLE
    assert out["msg"] == "nft is not available; install it with: apt-get install nftables"
    be.fake.fail_next(1)
    code, out = call(be, {"CNI_COMMAND": "STATUS"}, stdin(version="1.1.0"))
    assert out is not None and str(out["msg"]).startswith("cannot create nftables table inet portwright: ")


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_version_command(version: str) -> None:
    code, out = call(Rig(), {"CNI_COMMAND": "VERSION"}, json.dumps({"cniVersion": version}).encode())
    assert code == 0 and out == {"cniVersion": version, "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


def test_version_without_stdin() -> None:
    code, out = call(Rig(), {"CNI_COMMAND": "VERSION"}, b"")
    assert code == 0 and out is not None and out["cniVersion"] == "1.1.0"


@pytest.mark.parametrize(
    "e,data,code",
    [
        ({"CNI_COMMAND": "BOGUS"}, stdin(), p.E_INVALID_ENV),
        (env("ADD"), b"{oops", p.E_DECODE),
        (env("ADD"), stdin(version="0.2.0"), p.E_INCOMPATIBLE_VERSION),
        (env("ADD"), stdin(name=None), p.E_INVALID_CONFIG),
    ],
)
def test_errors_are_spec_json(e: dict[str, str], data: bytes, code: int) -> None:
    be = Rig()
    rc, out = call(be, e, data)
    assert rc == 1 and out is not None
    assert out["code"] == code and set(out) <= {"cniVersion", "code", "msg", "details"}
    assert isinstance(out["msg"], str) and out["msg"] and "\n" not in out["msg"]
    assert be.elements == {} and be.held == {}


def test_unexpected_exception_becomes_error_json() -> None:
    def boom() -> KernelBackend:
        raise RuntimeError("kaput")

    rc, out = plugin.run(env("ADD"), stdin(), boom)
    assert rc == 1 and json.loads(out)["code"] == p.E_INTERNAL


def test_ipv6_loopback_is_relayed_and_udp_refused() -> None:
    be = Rig()
    code, _ = call(be, env("ADD"), stdin([{"hostPort": 8081, "containerPort": 80, "hostIP": "::1"}]))
    assert code == 0
    assert be.held[OWNER][2] == (Binding("tcp", "::1", 8081, "198.18.200.5", 80),)
    assert OWNER not in be.elements or be.elements[OWNER] == []
    code, out = call(
        Rig(),
        env("ADD"),
        stdin([{"hostPort": 8081, "containerPort": 80, "hostIP": "::1", "protocol": "udp"}]),
    )
    assert code == 1 and out is not None and "relays only TCP" in str(out["msg"])


def _legacy_attachment(be: Rig, cid: str, port: int, network: str | None, bridge: bool = False) -> str:
    """What the previous portwright-cni left for an attachment: ``cni:<cid>:<ifname>`` elements
    (hashed by the firewall when too long), its masquerade rules if ``bridge``, and, if
    ``network``, a holder naming it."""
    legacy = cni_legacy_owner(cid, "eth0")
    maps = [Mapping("tcp", ipaddress.ip_address("0.0.0.0"), port, ipaddress.ip_address("198.18.200.5"), 80)]
    extra = rules.bridge_masquerade_commands(legacy, BRIDGE, maps, [SUBNET]) if bridge else []
    be.fw.publish(legacy, maps, extra_rules=extra)
    if bridge:
        be.fake_host.sysctl[BRIDGE] = "1"
    if network is not None:
        be.held[legacy] = (4242, network, (Binding("tcp", "0.0.0.0", port),))
    return legacy


@pytest.mark.parametrize("cid", ["short1", "l" * 200])
def test_del_and_add_remove_what_the_previous_version_left(cid: str) -> None:
    be = Rig()
    _legacy_attachment(be, cid, 8080, "pwnet")
    _legacy_attachment(be, "bystander", 9000, None)
    assert call(be, env("DEL", cid=cid, netns=""), stdin(prevResult=None)) == (0, None)
    assert host_ports(be) == {9000} and be.held == {}
    _legacy_attachment(be, cid, 8080, "pwnet")
    assert call(be, env("ADD", cid=cid), stdin())[0] == 0  # no conflict with its own old self
    assert set(be.held) == {cni_owner(cid, "eth0", "pwnet")}
    assert set(be.elements) == {
        nft_comment(cni_legacy_owner("bystander", "eth0")),
        cni_owner(cid, "eth0", "pwnet"),
    }
    assert rules.owners(be.fw.table()) == set(be.elements)


@pytest.mark.parametrize("cid", ["short1", "l" * 200])
def test_check_accepts_what_the_previous_version_added(cid: str) -> None:
    be = Rig()
    _legacy_attachment(be, cid, 8080, "pwnet", bridge=True)
    assert call(be, env("CHECK", cid=cid), stdin()) == (0, None)
    be.held.clear()
    code, out = call(be, env("CHECK", cid=cid), stdin())
    assert code == 1 and out is not None and "holder process" in str(out["msg"])


def test_gc_with_tags_of_the_previous_version() -> None:
    be = Rig()
    _legacy_attachment(be, "heldhere", 8001, "pwnet")
    _legacy_attachment(be, "heldthere", 8002, "othernet")
    _legacy_attachment(be, "unheld", 8003, None)
    _legacy_attachment(be, "l" * 200, 8004, "pwnet")  # hashed in nft, whole in the holder
    _legacy_attachment(be, "m" * 200, 8005, None)  # only an h: tag is left: not recognisable
    assert gc(be, "pwnet", []) == (0, None)
    assert host_ports(be) == {8002, 8003, 8005}
    assert [v[1] for v in be.held.values()] == ["othernet"]


def test_conflict_names_container_and_network() -> None:
    be = Rig()
    assert call(be, env("ADD", cid="x" * 200), stdin(name="net-a"))[0] == 0
    code, out = call(be, env("ADD"), stdin())
    assert code == 1 and out is not None and out["code"] == p.E_PORT_IN_USE
    assert f"container {'x' * 12} (eth0) on network net-a" in str(out["msg"])


def test_firewall_host_relays_other_machines_and_keeps_a_local_fast_path() -> None:
    """``"firewall": "host"`` (issue 16): no DNAT for 0.0.0.0:8080, a relay on it instead (the INPUT
    path, where the host firewall decides), and a 127.0.0.1:8080 element for local clients."""
    be = Rig()
    code, out = call(be, env("ADD"), stdin(firewall="host"))
    assert code == 0 and out is not None
    assert [m.docker_format() for m in be.elements[OWNER]] == ["127.0.0.1:8080->80/tcp"]
    (binding,) = be.held[OWNER][2]
    assert (binding.ip, binding.port, binding.to_port) == ("0.0.0.0", 8080, 80) and binding.to_ip
    code, out = call(
        be,
        env("ADD", cid="c2"),
        stdin([{"hostPort": 53, "containerPort": 53, "protocol": "udp"}], firewall="host"),
    )
    assert code != 0 and out is not None and "firewall host relays only TCP" in str(out["msg"])
    code, out = call(be, env("ADD", cid="c3"), stdin(firewall="sideways"))
    assert code != 0 and out is not None and "option firewall is 'sideways'" in str(out["msg"])


# --- DOCKER-USER rules of a bridge the runtime made (portwright-cni comment) -----------------------


def test_bridge_unused_only_when_no_port_but_the_attachments_own() -> None:
    assert plugin.bridge_unused([], [])
    assert plugin.bridge_unused(["vethx"], ["vethx"])
    assert plugin.bridge_unused([], ["vethx"])  # its veth went with the netns already
    assert not plugin.bridge_unused(["vethx", "vethy"], ["vethx"])  # another container
    assert not plugin.bridge_unused(["eno1"], [])  # an uplink, or no veth named by prevResult


def test_last_del_on_a_bridge_removes_its_docker_user_accept() -> None:
    be = Rig()
    assert call(be, env("ADD"), stdin())[0] == 0
    assert be.fake_host.docker_user == [BRIDGE]
    assert call(be, env("DEL"), stdin()) == (0, None)
    assert be.fake_host.docker_user == []  # the runtime deletes the bridge later: nothing would


def test_del_keeps_the_accept_while_another_container_is_on_the_bridge() -> None:
    be = Rig()
    be.fake_host.brif[BRIDGE] = ["vethx", "vethy"]
    assert call(be, env("ADD"), stdin())[0] == 0
    assert call(be, env("DEL"), stdin()) == (0, None)
    assert be.fake_host.docker_user == [BRIDGE] and OWNER not in be.elements


def test_del_without_prev_result_or_bridge_leaves_the_accept_to_forget_missing() -> None:
    be = Rig()
    assert call(be, env("ADD"), stdin())[0] == 0
    assert call(be, env("DEL"), stdin(prevResult=None)) == (0, None)
    assert be.fake_host.docker_user == [BRIDGE] and be.fake_host.forgets >= 1
    del be.fake_host.brif[BRIDGE]  # the bridge is gone: forget_missing's job, not this one's
    assert call(be, env("DEL"), stdin()) == (0, None)
    assert be.fake_host.docker_user == [BRIDGE]


def test_del_reports_a_failed_forget_after_removing_everything_else() -> None:
    be = Rig()
    assert call(be, env("ADD"), stdin())[0] == 0
    be.fake_host.fail_forget = True
    code, out = call(be, env("DEL"), stdin())
    assert code == 1 and out is not None and out["code"] == p.E_KERNEL
    assert f"DOCKER-USER rules of bridge {BRIDGE}" in str(out["details"])
    assert be.elements == {} and be.held == {}  # the attachment itself is gone all the same
    be.fake_host.fail_forget = False
    assert call(be, env("DEL"), stdin()) == (0, None) and be.fake_host.docker_user == []


def test_state_dir_from_the_configuration_reaches_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Podman's DEL from conmon's cleanup comes with none of the runtime's environment: the
    configuration's stateDir is what ADD and that DEL both see (the rewrite pins live there)."""
    from portwright.cni.kernel import cni_rewrite_state

    monkeypatch.delenv("PORTWRIGHT_STATE_DIR", raising=False)
    seen: list[str] = []

    def factory() -> object:
        seen.append(cni_rewrite_state())
        return Rig().backend()

    for cmd in ("ADD", "DEL"):
        code, out = plugin.run(env(cmd), stdin(stateDir="/run/pw-cni-test"), factory)  # type: ignore[arg-type]
        assert code == 0, out
    assert seen == ["/run/pw-cni-test/cni", "/run/pw-cni-test/cni"]


@pytest.mark.parametrize("bad", ["relative/dir", 7, ""])
def test_a_bad_state_dir_is_refused_and_changes_nothing(monkeypatch: pytest.MonkeyPatch, bad: object) -> None:
    monkeypatch.delenv("PORTWRIGHT_STATE_DIR", raising=False)
    be = Rig()
    code, out = call(be, env("ADD"), stdin(stateDir=bad))
    assert (
        code == 1 and out is not None and "stateDir" in str(out["msg"]) and "absolute path" in str(out["msg"])
    )
    assert "PORTWRIGHT_STATE_DIR" not in os.environ
    assert be.elements == {}
