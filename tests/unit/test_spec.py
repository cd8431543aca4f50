"""Docker -p / --expose / -e parsing: valid forms and every bad input named in one clear line."""

from __future__ import annotations

import ipaddress

import pytest

from portwright.errors import BadInput
from portwright.spec import check_name, parse_env, parse_expose, parse_publish


@pytest.mark.parametrize(
    "text, host_ip, host, container, proto",
    [
        ("80", None, None, (80, 80), "tcp"),
        ("8080:80", None, (8080, 8080), (80, 80), "tcp"),
        ("8080:80/udp", None, (8080, 8080), (80, 80), "udp"),
        ("127.0.0.1:8080:80", "127.0.0.1", (8080, 8080), (80, 80), "tcp"),
        ("127.0.0.1::80", "127.0.0.1", None, (80, 80), "tcp"),
        ("[::1]:8080:80", "::1", (8080, 8080), (80, 80), "tcp"),
        ("[::]::53/udp", "::", None, (53, 53), "udp"),
        ("8000-8010:80-90", None, (8000, 8010), (80, 90), "tcp"),
        ("8000-8100:80", None, (8000, 8100), (80, 80), "tcp"),
        ("80-82", None, None, (80, 82), "tcp"),
        ("9000:9000/SCTP", None, (9000, 9000), (9000, 9000), "sctp"),
    ],
)
def test_parse_valid(
    text: str, host_ip: str | None, host: tuple[int, int] | None, container: tuple[int, int], proto: str
) -> None:
    s = parse_publish(text)
    assert s.host_ip == (ipaddress.ip_address(host_ip) if host_ip else None)
    assert (s.host.start, s.host.end) == host if host else s.host is None
    assert (s.container.start, s.container.end) == container
    assert s.proto == proto


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("70000:80", "out of range"),
        ("80:0", "out of range"),
        ("80:80/foo", "unknown protocol"),
        ("1.2.3:80:80", "not an IP address"),
        ("9000-8000:80", "reversed"),
        ("80:90-85", "reversed"),
        ("8000-8002:80-81", "lengths"),
        ("::1:80:80", "too many"),
        ("[::1:80:80", "unterminated"),
        ("abc:80", "not a number"),
        ("8080:", "no container port"),
        ("", "empty"),
        ("224.0.0.1:80:80", "multicast"),
    ],
)
def test_parse_invalid(text: str, fragment: str) -> None:
    with pytest.raises(BadInput) as e:
        parse_publish(text)
    msg = str(e.value)
    assert fragment in msg
    assert "\n" not in msg


def test_requests_semantics() -> None:
    assert parse_publish("8000-8001:80-81").requests() == [(80, (8000,)), (81, (8001,))]
    assert parse_publish("8000-8002:80").requests() == [(80, (8000, 8001, 8002))]
    assert parse_publish("80-81").requests() == [(80, ()), (81, ())]


def test_expose_env_name() -> None:
    e = parse_expose("5000-5002/udp")
    assert (e.ports.start, e.ports.end, e.proto) == (5000, 5002, "udp")
    assert parse_expose("80").proto == "tcp"
    with pytest.raises(BadInput):
        parse_expose("80/bogus")
    assert parse_env("A=b=c") == ("A", "b=c")
    with pytest.raises(BadInput):
        parse_env("1A=b")
    assert check_name("web-1") == "web-1"
    for bad in ("", "-x", "a b", "x" * 64):
        with pytest.raises(BadInput):
            check_name(bad)
