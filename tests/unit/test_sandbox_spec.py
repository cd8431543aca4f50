"""SandboxSpec: the CLI's words parsed once, validated, stored as versioned JSON and read back into
the same types (and the untyped form of the first release still reads)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from portwright.errors import BadInput
from portwright.spec import SPEC_VERSION, SandboxSpec, parse_sandbox_spec


def _full() -> SandboxSpec:
    return parse_sandbox_spec(
        ["nginx", "-g", "daemon off;"],
        name="web",
        network="n1",
        publish=["127.0.0.1:8080:80", "[::1]::53/udp", "9000-9002:9000-9002"],
        publish_all=True,
        expose=["7000-7001/udp", "443"],
        env=["A=1", "B="],
        publish_mode="proxy",
        detach=True,
        proxy_protocol=True,
        udp_timeout=5,
        remove=True,
        cwd="/srv",
    )


def test_round_trip_through_json() -> None:
    spec = _full()
    stored = json.loads(json.dumps(spec.to_json()))
    assert stored["version"] == SPEC_VERSION
    back = SandboxSpec.from_json(stored)
    assert back == spec
    assert back.publish[1].host_ip == ipaddress.IPv6Address("::1") and back.publish[1].host is None
    assert back.env == (("A", "1"), ("B", ""))


def test_port_specs_add_publish_all_after_publish() -> None:
    specs = _full().port_specs()
    assert [s.text for s in specs] == [
        "127.0.0.1:8080:80",
        "[::1]::53/udp",
        "9000-9002:9000-9002",
        "7000-7001/udp",
        "443/tcp",
    ]
    assert all(s.host is None for s in specs[3:])


def test_the_first_releases_untyped_spec_still_reads() -> None:
    legacy = {
        "cmd": ["sleep", "1"],
        "name": "old",
        "network": "pw0",
        "publish": ["8080:80"],
        "publish_all": False,
        "expose": ["53/udp"],
        "env": ["X=y"],
        "publish_mode": "nat",
        "detach": True,
        "proxy_protocol": False,
        "udp_timeout": 90.0,
        "remove": False,
        "cwd": "/tmp",
    }
    spec = SandboxSpec.from_json(legacy)
    assert (
        spec.publish[0].container.start == 80 and spec.expose[0].proto == "udp" and spec.env == (("X", "y"),)
    )


def test_newer_keys_are_kept_not_lost() -> None:
    d = _full().to_json() | {"future_flag": [1, 2]}
    assert SandboxSpec.from_json(d).to_json()["future_flag"] == [1, 2]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"cmd": []}, "no command"),
        ({"cmd": ["x"], "name": "bad name"}, "name"),
        ({"cmd": ["x"], "udp_timeout": 0}, "--udp-timeout"),
        ({"cmd": ["x"], "publish_mode": "teleport"}, "--publish-mode"),
        ({"cmd": ["x"], "network": "none", "publish_all": True}, "--network none"),
        ({"cmd": ["x"], "publish": ["80:80:80:80"]}, "-p 80:80:80:80"),
        ({"cmd": ["x"], "env": ["1BAD=x"]}, "-e"),
    ],
)
def test_bad_requests_are_one_clear_error(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(BadInput, match=needle.replace("-", r"\-")):
        parse_sandbox_spec(**kwargs)  # type: ignore[arg-type]


def test_host_network_accepts_publish_for_host_remap() -> None:
    """-p/-P with --network host parse (issue 12); whether the kernel can remap is the publisher's."""
    spec = parse_sandbox_spec(["x"], network="host", publish=["127.0.0.1:8080:80"], expose=["53/udp"])
    assert [p.text for p in spec.port_specs()] == ["127.0.0.1:8080:80"]
    spec = parse_sandbox_spec(["x"], network="host", publish_all=True, expose=["53/udp"])
    assert [(p.host, p.container.start, p.proto) for p in spec.port_specs()] == [(None, 53, "udp")]


def test_specs_are_frozen() -> None:
    with pytest.raises(AttributeError):
        _full().name = "x"  # type: ignore[misc]


def test_proxy_workers_and_connect_timeout_flags() -> None:
    s = parse_sandbox_spec(["true"], publish_mode="proxy", proxy_workers=3, proxy_connect_timeout=2.5)
    assert (s.proxy_workers, s.proxy_connect_timeout) == (3, 2.5)
    assert SandboxSpec.from_json(s.to_json()) == s
    with pytest.raises(BadInput, match="--proxy-workers 65"):
        parse_sandbox_spec(["true"], publish_mode="proxy", proxy_workers=65)
    with pytest.raises(BadInput, match="--proxy-connect-timeout 0"):
        parse_sandbox_spec(["true"], publish_mode="proxy", proxy_connect_timeout=0)
    with pytest.raises(BadInput, match="apply only to --publish-mode proxy"):
        parse_sandbox_spec(["true"], proxy_workers=2)
