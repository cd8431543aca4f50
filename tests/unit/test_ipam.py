"""Subnet carving and address allocation (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from portwright import ipam
from portwright.errors import BadInput, Conflict


def test_carve_skips_used_and_stays_in_benchmark_range() -> None:
    used = [ipaddress.IPv4Network("198.18.0.0/24"), ipaddress.IPv4Network("198.18.1.128/25")]
    net = ipam.carve4(used)
    assert net == ipaddress.IPv4Network("198.18.2.0/24")
    assert net.subnet_of(ipam.POOL4)
    n6 = ipam.carve6([ipaddress.IPv6Network("2001:2::/64")])
    assert n6 == ipaddress.IPv6Network("2001:2:0:1::/64") and n6.subnet_of(ipam.POOL6)


def test_carve_exhausted() -> None:
    with pytest.raises(Conflict):
        ipam.carve4([ipaddress.IPv4Network("198.18.0.0/15")])


def test_next_address_reuses_released() -> None:
    net = ipaddress.IPv4Network("198.18.7.0/24")
    assert ipam.gateway(net) == ipaddress.IPv4Address("198.18.7.1")
    a = ipam.next_address(net, [])
    assert a == ipaddress.IPv4Address("198.18.7.2")
    b = ipam.next_address(net, [a])
    assert b == a + 1
    assert ipam.next_address(net, [b]) == a  # a was released


def test_next_address_full() -> None:
    net = ipaddress.IPv4Network("198.18.9.0/30")  # .1 gateway, .2 the only host
    with pytest.raises(Conflict):
        ipam.next_address(net, [ipaddress.IPv4Address("198.18.9.2")])


def test_parse_subnet_errors() -> None:
    assert ipam.parse_subnet("198.18.5.0/24", ipaddress.IPv4Network, "--subnet").prefixlen == 24
    assert ipam.parse_subnet("2001:2:5::/64", ipaddress.IPv6Network, "--subnet6").prefixlen == 64
    for bad in ("198.18.5.1/24", "2001:2::/64", "nope", "198.18.5.0/31"):
        with pytest.raises(BadInput):
            ipam.parse_subnet(bad, ipaddress.IPv4Network, "--subnet")


def test_mac_like_docker() -> None:
    assert ipam.mac_for(ipaddress.IPv4Address("198.18.0.2"), "abc") == "02:42:c6:12:00:02"
