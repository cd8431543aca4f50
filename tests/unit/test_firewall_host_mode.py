"""--firewall host without root: the config file's default, the spec round trip, and which
binding the firewall-host publisher gives to the relay and which to nat (issue 16)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from portwright import config
from portwright.errors import BadInput
from portwright.model import Mapping
from portwright.publish import registry
from portwright.publish.firewallhost import local_fast_path, split
from portwright.spec import SandboxSpec, parse_sandbox_spec

SB4 = ipaddress.ip_address("198.18.0.2")


def m(host: str, port: int = 8080) -> Mapping:
    hip = ipaddress.ip_address(host)
    return Mapping("tcp", hip, port, SB4, 80)


def test_config_default_and_its_errors(tmp_path: Path) -> None:
    env = {"PORTWRIGHT_STATE_DIR": str(tmp_path)}
    assert config.config_path(env) in (None, config.SYSTEM_CONFIG)  # no file in the state dir yet
    (tmp_path / "config.toml").write_text('[run]\nfirewall = "host"\n')
    assert config.default_firewall(env) == "host"
    (tmp_path / "config.toml").write_text('[run]\nfirewall = "sideways"\n')
    with pytest.raises(
        BadInput, match=r"config.toml: \[run\] firewall = 'sideways' is not one of forward, host"
    ):
        config.default_firewall(env)
    (tmp_path / "config.toml").write_text("[run\n")
    with pytest.raises(BadInput, match="not valid TOML"):
        config.default_firewall(env)
    other = tmp_path / "other.toml"
    other.write_text("[run]\n")
    assert config.default_firewall(env | {"PORTWRIGHT_CONFIG": str(other)}) == "forward"  # the env wins


def test_spec_carries_firewall_and_lets_proxy_protocol_through() -> None:
    spec = parse_sandbox_spec(["true"], publish=["8080:80"], firewall="host", proxy_protocol=True)
    assert SandboxSpec.from_json(spec.to_json()) == spec
    assert registry.mode_for(spec) == "firewall-host"
    assert "firewall" not in parse_sandbox_spec(["true"]).to_json()  # old readers see nothing new
    with pytest.raises(BadInput, match="--firewall 'sideways' is unknown"):
        parse_sandbox_spec(["true"], firewall="sideways")
    with pytest.raises(BadInput, match="--proxy-protocol"):
        parse_sandbox_spec(["true"], publish=["8080:80"], proxy_protocol=True, publish_mode="nat")


def test_only_loopback_goes_to_nat_and_v4_wildcards_get_a_local_fast_path() -> None:
    bound = [
        (m("0.0.0.0"), None),
        (m("::"), None),
        (m("127.0.0.1", 9), None),
        (m("::1", 9), None),
        (m("198.19.1.1", 7), None),
    ]
    loop, other = split(bound)
    assert [x.host_ip.is_loopback for x, _ in loop] == [True, True]
    assert {str(x.host_ip) for x, _ in other} == {"0.0.0.0", "::", "198.19.1.1"}
    fast = local_fast_path([x for x, _ in other])
    assert [(str(f.host_ip), f.host_port) for f in fast] == [("127.0.0.1", 8080)]
