"""Unit tests for the CNI wire protocol: env, config, version negotiation, mappings, errors."""

from __future__ import annotations

import ipaddress
import json

import pytest

from portwright.cni import protocol as p
from portwright.model import ANY4, ANY6, Mapping

ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "abc123",
    "CNI_NETNS": "/var/run/netns/x",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/usr/lib/cni:/opt/cni/bin",
}

PREV_100 = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "pwtcni0", "mac": "aa:bb:cc:dd:ee:01"},
        {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/var/run/netns/x"},
    ],
    "ips": [
        {"interface": 2, "address": "198.18.200.5/24", "gateway": "198.18.200.1"},
        {"interface": 2, "address": "2001:2:c::5/64", "gateway": "2001:2:c::1"},
    ],
}


def conf(**kw: object) -> str:
    base: dict[str, object] = {
        "cniVersion": "1.0.0",
        "name": "pwnet",
        "type": "portwright-cni",
        "prevResult": PREV_100,
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
    }
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not None})


class TestEnv:
    def test_add_ok(self) -> None:
        e = p.parse_env({**ENV, "CNI_ARGS": "K8S_POD_NAME=web;IgnoreUnknown=1"})
        assert (e.command, e.container_id, e.ifname) == ("ADD", "abc123", "eth0")
        assert e.args == (("K8S_POD_NAME", "web"), ("IgnoreUnknown", "1"))
        assert e.path == ("/usr/lib/cni", "/opt/cni/bin")

    @pytest.mark.parametrize(
        "env,needle",
        [
            ({}, "CNI_COMMAND is not set"),
            ({"CNI_COMMAND": "FROB"}, "CNI_COMMAND 'FROB' is unknown"),
            ({**ENV, "CNI_CONTAINERID": ""}, "CNI_CONTAINERID is not set"),
            ({**ENV, "CNI_CONTAINERID": "-bad"}, "CNI_CONTAINERID '-bad' is invalid"),
            ({**ENV, "CNI_CONTAINERID": "a:b"}, "is invalid"),
            ({**ENV, "CNI_CONTAINERID": "abc\n"}, "is invalid"),  # '$' matched before a final newline
            ({**ENV, "CNI_IFNAME": ""}, "CNI_IFNAME is not set"),
            ({**ENV, "CNI_IFNAME": "x" * 16}, "is invalid"),
            ({**ENV, "CNI_IFNAME": "et/h0"}, "is invalid"),
            ({**ENV, "CNI_NETNS": ""}, "CNI_NETNS is not set"),
            ({**ENV, "CNI_ARGS": "novalue"}, "is not KEY=VALUE"),
        ],
    )
    def test_bad_env_is_code_4(self, env: dict[str, str], needle: str) -> None:
        with pytest.raises(p.CniError) as ei:
            p.parse_env(env)
        assert ei.value.code == p.E_INVALID_ENV
        assert needle in ei.value.msg

    def test_del_needs_no_netns(self) -> None:
        assert p.parse_env({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}).netns == ""

    @pytest.mark.parametrize("cmd", ["VERSION", "STATUS", "GC"])
    def test_commands_without_container(self, cmd: str) -> None:
        assert p.parse_env({"CNI_COMMAND": cmd}).command == cmd


class TestVersion:
    @pytest.mark.parametrize("v", ["0.4.0", "1.0.0", "1.1.0"])
    def test_supported(self, v: str) -> None:
        assert p.negotiate_version({"cniVersion": v}) == v

    @pytest.mark.parametrize("v", ["0.3.1", "0.2.0", "2.0.0", "banana"])
    def test_unsupported_is_code_1(self, v: str) -> None:
        with pytest.raises(p.CniError) as ei:
            p.negotiate_version({"cniVersion": v})
        assert ei.value.code == p.E_INCOMPATIBLE_VERSION
        assert v in ei.value.msg and "1.1.0" in ei.value.msg

    def test_cni_versions_picks_highest_common(self) -> None:
        assert (
            p.negotiate_version({"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0", "9.0.0"]})
            == "1.1.0"
        )
        assert p.negotiate_version({"cniVersions": ["0.3.1", "0.4.0"]}) == "0.4.0"

    def test_missing_version_is_code_7(self) -> None:
        with pytest.raises(p.CniError) as ei:
            p.negotiate_version({})
        assert ei.value.code == p.E_INVALID_CONFIG

    def test_gc_and_status_need_1_1(self) -> None:
        for cmd in ("GC", "STATUS"):
            with pytest.raises(p.CniError) as ei:
                p.parse_config(conf(cniVersion="1.0.0"), cmd)
            assert ei.value.code == p.E_INCOMPATIBLE_VERSION and "1.1.0" in ei.value.msg
            assert p.parse_config(conf(cniVersion="1.1.0"), cmd).cni_version == "1.1.0"

    def test_version_result(self) -> None:
        assert p.version_result("0.4.0") == {
            "cniVersion": "0.4.0",
            "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"],
        }

    def test_error_version(self) -> None:
        assert p.error_version(b'{"cniVersion": "0.4.0"}') == "0.4.0"
        assert p.error_version(b"not json") == "1.1.0"
        assert p.error_version(b'{"cniVersion": "0.1.0"}') == "1.1.0"


class TestConfig:
    def test_defaults(self) -> None:
        c = p.parse_config(conf(), "ADD")
        assert c.reserve_host_port is True and c.snat is True
        assert c.port_mappings == (p.PortMapping(8080, 80, "tcp", None),)
        assert c.name == "pwnet"

    def test_options(self) -> None:
        c = p.parse_config(conf(reserveHostPort=False, snat=False), "ADD")
        assert c.reserve_host_port is False and c.snat is False

    @pytest.mark.parametrize(
        "raw,code,needle",
        [
            ("{not json", p.E_DECODE, "not valid JSON"),
            ("[1, 2]", p.E_DECODE, "must be a JSON object"),
            (conf(name=None), p.E_INVALID_CONFIG, 'no "name"'),
            (conf(prevResult=None), p.E_INVALID_CONFIG, "chained plugin"),
            (conf(reserveHostPort="yes"), p.E_INVALID_CONFIG, "reserveHostPort"),
            (conf(runtimeConfig={"portMappings": {"hostPort": 1}}), p.E_INVALID_CONFIG, "must be a list"),
            (
                conf(runtimeConfig={"portMappings": [{"hostPort": 0, "containerPort": 80}]}),
                p.E_INVALID_CONFIG,
                "hostPort 0",
            ),
            (
                conf(runtimeConfig={"portMappings": [{"hostPort": 80, "containerPort": 70000}]}),
                p.E_INVALID_CONFIG,
                "containerPort 70000",
            ),
            (
                conf(
                    runtimeConfig={
                        "portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]
                    }
                ),
                p.E_INVALID_CONFIG,
                "'icmp' is not supported",
            ),
            (
                conf(
                    runtimeConfig={"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "nope"}]}
                ),
                p.E_INVALID_CONFIG,
                "'nope' is not an IP address",
            ),
            (conf(cniVersion="0.3.1"), p.E_INCOMPATIBLE_VERSION, "0.3.1"),
        ],
    )
    def test_bad_config(self, raw: str, code: int, needle: str) -> None:
        with pytest.raises(p.CniError) as ei:
            p.parse_config(raw, "ADD")
        assert ei.value.code == code
        assert needle in ei.value.msg

    def test_del_without_prev_result(self) -> None:
        c = p.parse_config(conf(prevResult=None), "DEL")
        assert c.prev_result is None

    def test_protocol_case_and_host_ip(self) -> None:
        c = p.parse_config(
            conf(
                runtimeConfig={
                    "portMappings": [
                        {"hostPort": 53, "containerPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.1"},
                        {"hostPort": 81, "containerPort": 80, "hostIP": "[::1]"},
                    ]
                }
            ),
            "ADD",
        )
        assert c.port_mappings == (
            p.PortMapping(53, 5353, "udp", ipaddress.ip_address("127.0.0.1")),
            p.PortMapping(81, 80, "tcp", ipaddress.ip_address("::1")),
        )

    def test_valid_attachments(self) -> None:
        c = p.parse_config(
            conf(
                cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "a1", "ifname": "eth0"}]}
            ),
            "GC",
        )
        assert c.valid_attachments == (p.Attachment("a1", "eth0"),)
        c = p.parse_config(conf(cniVersion="1.1.0", **{"cni.dev/attachments": []}), "GC")
        assert c.valid_attachments == ()
        with pytest.raises(p.CniError):
            p.parse_config(conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"x": 1}]}), "GC")


class TestAddresses:
    def test_sandbox_addresses_only(self) -> None:
        prev = {
            "interfaces": [{"name": "br"}, {"name": "eth0", "sandbox": "/n"}],
            "ips": [
                {"interface": 0, "address": "198.18.200.1/24"},
                {"interface": 1, "address": "198.18.200.7/24"},
            ],
        }
        a = p.container_addresses(prev)
        assert str(a.ip4) == "198.18.200.7" and a.ip6 is None

    def test_v040_result_and_no_interface_index(self) -> None:
        prev = {"ips": [{"version": "4", "address": "198.18.201.9/24"}]}
        assert str(p.container_addresses(prev).ip4) == "198.18.201.9"

    def test_host_interfaces(self) -> None:
        assert p.host_interfaces(PREV_100) == ("pwtcni0", "veth1")

    def test_bad_address(self) -> None:
        with pytest.raises(p.CniError):
            p.container_addresses({"ips": [{"address": "zzz"}]})


class TestMappings:
    addrs = p.ContainerAddrs(ipaddress.IPv4Address("198.18.200.5"), ipaddress.IPv6Address("2001:2:c::5"))

    def test_wildcard_both_families(self) -> None:
        ms = p.to_mappings((p.PortMapping(8080, 80, "tcp", None),), self.addrs)
        assert ms == [
            Mapping("tcp", ANY4, 8080, self.addrs.ip4, 80),  # type: ignore[arg-type]
            Mapping("tcp", ANY6, 8080, self.addrs.ip6, 80),
        ]  # type: ignore[arg-type]

    def test_v4_only_container(self) -> None:
        a = p.ContainerAddrs(self.addrs.ip4, None)
        ms = p.to_mappings((p.PortMapping(8080, 80, "udp", None),), a)
        assert [m.host_ip for m in ms] == [ANY4]
        # ::1 falls back to the IPv4 container address (served by the relay).
        ms = p.to_mappings((p.PortMapping(8081, 80, "tcp", ipaddress.ip_address("::1")),), a)
        assert ms[0].container_ip == a.ip4

    def test_explicit_family_missing(self) -> None:
        a = p.ContainerAddrs(self.addrs.ip4, None)
        with pytest.raises(p.CniError) as ei:
            p.to_mappings((p.PortMapping(80, 80, "tcp", ipaddress.ip_address("2001:2::1")),), a)
        assert "IPv6 container address" in ei.value.msg

    def test_no_address(self) -> None:
        with pytest.raises(p.CniError):
            p.to_mappings((p.PortMapping(80, 80, "tcp", None),), p.ContainerAddrs(None, None))


class TestResults:
    def test_passthrough_sets_version(self) -> None:
        c = p.parse_config(conf(cniVersion="1.1.0"), "ADD")
        out = p.passthrough_result(c)
        assert out["cniVersion"] == "1.1.0" and out["ips"] == PREV_100["ips"]

    def test_error_json(self) -> None:
        e = p.CniError(100, "host port 0.0.0.0:8080/tcp is held", "by container x")
        assert e.to_json("1.0.0") == {
            "cniVersion": "1.0.0",
            "code": 100,
            "msg": "host port 0.0.0.0:8080/tcp is held",
            "details": "by container x",
        }
        assert "details" not in p.CniError(7, "x").to_json("1.0.0")
