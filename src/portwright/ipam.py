"""Address management: carve network subnets from the pools and hand out sandbox addresses.

Pure functions over what is already used; the engine calls them inside one state transaction
(BEGIN IMMEDIATE), so two concurrent ``run``s can never get the same address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TypeVar, overload

from .errors import BadInput, Conflict

# RFC 2544 / RFC 5180 benchmarking ranges: never routed on the Internet, so a default network
# can never shadow a real destination.
POOL4 = ipaddress.IPv4Network("198.18.0.0/15")
POOL6 = ipaddress.IPv6Network("2001:2::/48")
PREFIX4 = 24
PREFIX6 = 64

AnyNet = ipaddress.IPv4Network | ipaddress.IPv6Network
#: One family at a time: a v4 network yields v4 addresses, a v6 one v6 addresses.
Net = TypeVar("Net", ipaddress.IPv4Network, ipaddress.IPv6Network)


def overlapping(net: AnyNet, used: Iterable[AnyNet]) -> AnyNet | None:
    for u in used:
        if u.version == net.version and net.overlaps(u):
            return u
    return None


def carve4(
    used: Iterable[ipaddress.IPv4Network], pool: ipaddress.IPv4Network = POOL4, prefix: int = PREFIX4
) -> ipaddress.IPv4Network:
    """The first /prefix of pool that overlaps nothing in used."""
    used_l = [u for u in used if u.version == 4]
    for cand in pool.subnets(new_prefix=prefix):
        if overlapping(cand, used_l) is None:
            return cand
    raise Conflict(f"no free /{prefix} left in {pool}; remove unused networks or give --subnet")


def carve6(
    used: Iterable[ipaddress.IPv6Network], pool: ipaddress.IPv6Network = POOL6, prefix: int = PREFIX6
) -> ipaddress.IPv6Network:
    used_l = [u for u in used if u.version == 6]
    for i, cand in enumerate(pool.subnets(new_prefix=prefix)):
        if i >= 65536:
            break
        if overlapping(cand, used_l) is None:
            return cand
    raise Conflict(f"no free /{prefix} left in {pool}; remove unused networks or give --subnet6")


@overload
def parse_subnet(text: str, version: type[ipaddress.IPv4Network], flag: str) -> ipaddress.IPv4Network: ...
@overload
def parse_subnet(text: str, version: type[ipaddress.IPv6Network], flag: str) -> ipaddress.IPv6Network: ...
def parse_subnet(text: str, version: type[AnyNet], flag: str) -> AnyNet:
    """A user-given subnet of the family ``version`` (IPv4Network or IPv6Network)."""
    want = 4 if version is ipaddress.IPv4Network else 6
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise BadInput(f"{flag} {text!r} is not a valid network ({e}); e.g. 198.18.5.0/24") from None
    if net.version != want:
        raise BadInput(f"{flag} {text!r} is IPv{net.version}; expected an IPv{want} network")
    limit = 30 if want == 4 else 126
    if net.prefixlen > limit:
        raise BadInput(f"{flag} {text!r} is too small; use a prefix of /{limit} or shorter")
    return net


@overload
def gateway(net: ipaddress.IPv4Network) -> ipaddress.IPv4Address: ...
@overload
def gateway(net: ipaddress.IPv6Network) -> ipaddress.IPv6Address: ...
def gateway(net: AnyNet) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The bridge's address: the first host address, as Docker does."""
    return net.network_address + 1


@overload
def next_address(
    net: ipaddress.IPv4Network, used: Iterable[ipaddress.IPv4Address]
) -> ipaddress.IPv4Address: ...
@overload
def next_address(
    net: ipaddress.IPv6Network, used: Iterable[ipaddress.IPv6Address]
) -> ipaddress.IPv6Address: ...
def next_address(
    net: AnyNet, used: Iterable[ipaddress.IPv4Address] | Iterable[ipaddress.IPv6Address]
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The lowest free host address after the gateway (released addresses are reused)."""
    taken = {int(a) for a in used if a.version == net.version}
    taken.add(int(gateway(net)))
    first = int(net.network_address) + 2
    # IPv4: up to the broadcast address; IPv6: the first million addresses are plenty.
    last = int(net.broadcast_address) if net.version == 4 else first + min(net.num_addresses - 3, 1 << 20)
    for n in range(first, last):
        if n not in taken:
            return ipaddress.IPv4Address(n) if net.version == 4 else ipaddress.IPv6Address(n)
    raise Conflict(f"network {net} has no free address left; remove a sandbox or use a larger subnet")


def mac_for(ip4: ipaddress.IPv4Address | None, seed: str) -> str:
    """A stable locally administered MAC: 02:42 + the IPv4 address, as Docker does, else from seed."""
    if ip4 is not None:
        b = ip4.packed
    else:
        b = bytes.fromhex(seed[:8].ljust(8, "0"))
    return "02:42:" + ":".join(f"{x:02x}" for x in b)
