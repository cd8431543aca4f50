"""Unit tests for the CNI wire protocol: env, config, version negotiation, mappings, errors."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import string

import pytest

from portwright.cni import protocol as p
from portwright.firewall import rules
from portwright.model import ANY4, ANY6, Mapping

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni:/opt/cni/bin"}

PREV_100 = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "pwtcni0", "mac": "aa:bb:cc:dd:ee:01"},
                   {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
                   {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/var/run/netns/x"}],
    "ips": [{"interface": 2, "address": "198.18.200.5/24", "gateway": "198.18.200.1"},
            {"interface": 2, "address": "2001:2:c::5/64", "gateway": "2001:2:c::1"}],
}


def conf(**kw: object) -> str:
    base: dict[str, object] = {"cniVersion": "1.0.0", "name": "pwnet", "type": "portwright-cni",
                               "prevResult": PREV_100,
                               "runtimeConfig": {"portMappings": [
                                   {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not None})


class TestEnv:
    def test_add_ok(self) -> None:
        e = p.parse_env({**ENV, "CNI_ARGS": "K8S_POD_NAME=web;IgnoreUnknown=1"})
        assert (e.command, e.container_id, e.ifname) == ("ADD", "abc123", "eth0")
        assert e.args == (("K8S_POD_NAME", "web"), ("IgnoreUnknown", "1"))
        assert e.path == ("/usr/lib/cni", "/opt/cni/bin")

    @pytest.mark.parametrize("env,needle", [
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
    ])
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
        assert p.negotiate_version({"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0", "9.0.0"]}) == "1.1.0"
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
        assert p.version_result("0.4.0") == {"cniVersion": "0.4.0",
                                             "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}

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

    @pytest.mark.parametrize("raw,code,needle", [
        ("{not json", p.E_DECODE, "not valid JSON"),
        ("[1, 2]", p.E_DECODE, "must be a JSON object"),
        (conf(name=None), p.E_INVALID_CONFIG, 'no "name"'),
        (conf(prevResult=None), p.E_INVALID_CONFIG, "chained plugin"),
        (conf(reserveHostPort="yes"), p.E_INVALID_CONFIG, "reserveHostPort"),
        (conf(runtimeConfig={"portMappings": {"hostPort": 1}}), p.E_INVALID_CONFIG, "must be a list"),
        (conf(runtimeConfig={"portMappings": [{"hostPort": 0, "containerPort": 80}]}),
         p.E_INVALID_CONFIG, "hostPort 0"),
        (conf(runtimeConfig={"portMappings": [{"hostPort": 80, "containerPort": 70000}]}),
         p.E_INVALID_CONFIG, "containerPort 70000"),
        (conf(runtimeConfig={"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}),
         p.E_INVALID_CONFIG, "'icmp' is not supported"),
        (conf(runtimeConfig={"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "nope"}]}),
         p.E_INVALID_CONFIG, "'nope' is not an IP address"),
        (conf(cniVersion="0.3.1"), p.E_INCOMPATIBLE_VERSION, "0.3.1"),
    ])
    def test_bad_config(self, raw: str, code: int, needle: str) -> None:
        with pytest.raises(p.CniError) as ei:
            p.parse_config(raw, "ADD")
        assert ei.value.code == code
        assert needle in ei.value.msg

    def test_del_without_prev_result(self) -> None:
        c = p.parse_config(conf(prevResult=None), "DEL")
        assert c.prev_result is None

    def test_protocol_case_and_host_ip(self) -> None:
        c = p.parse_config(conf(runtimeConfig={"portMappings": [
            {"hostPort": 53, "containerPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.1"},
            {"hostPort": 81, "containerPort": 80, "hostIP": "[::1]"}]}), "ADD")
        assert c.port_mappings == (
            p.PortMapping(53, 5353, "udp", ipaddress.ip_address("127.0.0.1")),
            p.PortMapping(81, 80, "tcp", ipaddress.ip_address("::1")))

    def test_valid_attachments(self) -> None:
        c = p.parse_config(conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [
            {"containerID": "a1", "ifname": "eth0"}]}), "GC")
        assert c.valid_attachments == (p.Attachment("a1", "eth0"),)
        c = p.parse_config(conf(cniVersion="1.1.0", **{"cni.dev/attachments": []}), "GC")
        assert c.valid_attachments == ()
        with pytest.raises(p.CniError):
            p.parse_config(conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"x": 1}]}), "GC")


class TestAddresses:
    def test_sandbox_addresses_only(self) -> None:
        prev = {"interfaces": [{"name": "br"}, {"name": "eth0", "sandbox": "/n"}],
                "ips": [{"interface": 0, "address": "198.18.200.1/24"},
                        {"interface": 1, "address": "198.18.200.7/24"}]}
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
        assert ms == [Mapping("tcp", ANY4, 8080, self.addrs.ip4, 80),  # type: ignore[arg-type]
                      Mapping("tcp", ANY6, 8080, self.addrs.ip6, 80)]  # type: ignore[arg-type]

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


class TestTagsAndResults:
    def test_owner_tag_round_trip(self) -> None:
        cid = "f" * 64
        tag = p.owner_tag(cid, "eth0", "pwnet")
        assert tag == f"cni:{cid}:eth0:pwnet"
        assert p.parse_owner_tag(tag) == p.OwnerTag(cid, "eth0", "pwnet")
        assert p.parse_owner_tag("sandbox:abc") is None
        assert p.parse_owner_tag("cni:nocolon") is None
        assert p.parse_owner_tag("cni:a::net") is None
        assert p.parse_owner_tag("cni:a:b:c:d") is None

    def test_legacy_tag_parses_without_network(self) -> None:
        assert p.legacy_owner_tag("abc", "eth0") == "cni:abc:eth0"
        assert p.parse_owner_tag("cni:abc:eth0") == p.OwnerTag("abc", "eth0", None)

    @pytest.mark.parametrize("name", ["n" * 41, "net:work", "net work", "-net", "réseau", "x\n"])
    def test_network_field_digest(self, name: str) -> None:
        field = p.network_field(name)
        assert field.startswith("#") and len(field) == 1 + p.NET_DIGEST_HEX
        assert field == p.network_field(name) and field != p.network_field(name + "2")
        tag = p.owner_tag("abc", "eth0", name)
        assert p.parse_owner_tag(tag) == p.OwnerTag("abc", "eth0", field)

    def test_long_container_id_keeps_a_prefix_and_a_digest(self) -> None:
        cid = "a" * 200
        tag = p.owner_tag(cid, "eth0", "pwnet")
        t = p.parse_owner_tag(tag)
        assert t is not None and t.network == "pwnet" and t.ifname == "eth0" and t.shown_id == "a" * 12
        assert t.container == "a" * 12 + "#" + hashlib.sha256(cid.encode()).hexdigest()[:32]
        assert tag != p.owner_tag("a" * 199, "eth0", "pwnet") != p.owner_tag(cid, "eth1", "pwnet")

    def test_tags_fit_nft_and_round_trip_random(self) -> None:
        seed = random.randrange(2**32)
        print(f"seed {seed}")
        rng = random.Random(seed)
        id_chars = string.ascii_letters + string.digits + "_.-"
        seen: dict[str, tuple[str, str, str]] = {}
        for _ in range(3000):
            n = rng.choice([1, 12, 13, 63, 64, 65, 90, 110, 120, 200, 1000, rng.randrange(1, 300)])
            cid = rng.choice(string.ascii_letters + string.digits) + "".join(rng.choices(id_chars, k=n - 1))
            ifname = rng.choice(["eth0", "net1", "e" * 15, rng.choice("abc") * rng.randrange(1, 16)])
            network = rng.choice(["pwnet", "podman", "n" * 40, "n" * 41, "a b", "net:x", "é" * 30,
                                  "".join(rng.choices(id_chars, k=rng.randrange(1, 60))).lstrip("_.-") or "n"])
            tag = p.owner_tag(cid, ifname, network)
            assert len(tag.encode()) <= p.TAG_MAX and tag.isprintable(), (seed, tag)
            assert rules.owner_tag(tag) == tag  # never hashed by the firewall: the kernel holds it whole
            t = p.parse_owner_tag(tag)
            assert t is not None and t.ifname == ifname and t.network == p.network_field(network), (seed, tag)
            assert t.shown_id == cid[:12]
            assert t.container == cid or t.container.startswith(cid[:12] + "#"), (seed, tag)
            assert p.owner_tag(cid, ifname, network) == tag  # GC recomputes it from the valid list
            key = (cid, ifname, network)
            assert seen.setdefault(tag, key) == key, (seed, tag)  # distinct attachments, distinct tags

    def test_passthrough_sets_version(self) -> None:
        c = p.parse_config(conf(cniVersion="1.1.0"), "ADD")
        out = p.passthrough_result(c)
        assert out["cniVersion"] == "1.1.0" and out["ips"] == PREV_100["ips"]

    def test_error_json(self) -> None:
        e = p.CniError(100, "host port 0.0.0.0:8080/tcp is held", "by container x")
        assert e.to_json("1.0.0") == {"cniVersion": "1.0.0", "code": 100,
                                      "msg": "host port 0.0.0.0:8080/tcp is held", "details": "by container x"}
        assert "details" not in p.CniError(7, "x").to_json("1.0.0")
