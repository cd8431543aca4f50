"""The data model shared by every layer: frozen, slotted dataclasses and no I/O.

A ``Mapping`` is one concrete published port after allocation: one protocol, one host
address (``0.0.0.0``/``::`` for "any"), one host port, one sandbox address and port.
A ``-p 8080:80`` on a dual-stack host becomes two Mappings (v4 and v6 halves) with the same
host port. Publishers (nat, proxy, host, ebpf) consume lists of Mappings. ``bindings_clash``
is the one rule for when two host bindings collide (allocation, nftables, CNI, socket owners).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Proto = Literal["tcp", "udp", "sctp"]
PROTOS: tuple[Proto, ...] = ("tcp", "udp", "sctp")
PublishMode = Literal["nat", "proxy", "ebpf"]
PUBLISH_MODES: tuple[str, ...] = ("nat", "proxy", "ebpf")

ANY4 = ipaddress.IPv4Address("0.0.0.0")
ANY6 = ipaddress.IPv6Address("::")


def bindings_clash(a: IPAddress, b: IPAddress, *, a_dual: bool = False, b_dual: bool = False) -> bool:
    """Would bindings on ``a`` and ``b`` (same protocol and port) clash? The one clash rule.

    It is ``bind()``'s rule for sockets that do not share a port (no SO_REUSEADDR/SO_REUSEPORT):
    the same address, or either side the wildcard of the other's family. ``::`` also covers
    IPv4 only when it is dual-stack (a socket with IPV6_V6ONLY off: ``a_dual``/``b_dual``); a
    dual-stack binding on ``::ffff:a.b.c.d`` is the IPv4 address a.b.c.d. A Mapping on ``::`` is
    IPv6 only (its IPv4 half is a mapping of its own), so mappings pass no flag.
    """
    a, b = _dual_as_v4(a, a_dual), _dual_as_v4(b, b_dual)
    if a.version == b.version:
        return a == b or a.is_unspecified or b.is_unspecified
    v6, dual = (a, a_dual) if a.version == 6 else (b, b_dual)
    return dual and v6.is_unspecified


def _dual_as_v4(ip: IPAddress, dual: bool) -> IPAddress:
    if dual and isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class Mapping:
    """One published port: host_ip:host_port/proto -> container_ip:container_port."""

    proto: Proto
    host_ip: IPAddress  # ANY4 / ANY6 for all addresses of that family
    host_port: int
    container_ip: IPAddress  # may be v4 behind a v6 host_ip (proxy bridges families)
    container_port: int

    @property
    def family(self) -> int:
        return self.host_ip.version

    @property
    def wildcard(self) -> bool:
        # 0.0.0.0 and :: are the addresses whose integer is 0; ``is_unspecified`` compares whole
        # address objects, which 20,000 mappings' rules ask three times each (#11).
        return not int(self.host_ip)

    @property
    def loopback(self) -> bool:
        return self.host_ip.is_loopback

    def host_binding(self) -> str:
        """Docker's rendering of the host side: ``0.0.0.0:8080`` or ``[::1]:8080``."""
        h = f"[{self.host_ip}]" if self.host_ip.version == 6 else str(self.host_ip)
        return f"{h}:{self.host_port}"

    def docker_format(self) -> str:
        """``0.0.0.0:8080->80/tcp``, as in docker ps' PORTS column."""
        return f"{self.host_binding()}->{self.container_port}/{self.proto}"

    def to_json(self) -> dict[str, object]:
        return {
            "proto": self.proto,
            "host_ip": address_text(self.host_ip),
            "host_port": self.host_port,
            "container_ip": address_text(self.container_ip),
            "container_port": self.container_port,
        }

    @classmethod
    def from_row(
        cls, proto: str, host_ip: str, host_port: int, container_ip: str, container_port: int
    ) -> Mapping:
        """A stored row (``state``'s ports table), read back without building a dict first."""
        if proto not in PROTOS:
            raise ValueError(f"bad proto {proto!r}")
        return cls(proto, _address(host_ip), int(host_port), _address(container_ip), int(container_port))

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Mapping:
        proto = str(d["proto"])
        if proto not in PROTOS:
            raise ValueError(f"bad proto {proto!r}")
        return cls(
            proto=proto,
            host_ip=_address(str(d["host_ip"])),
            host_port=int(str(d["host_port"])),
            container_ip=_address(str(d["container_ip"])),
            container_port=int(str(d["container_port"])),
        )


@functools.lru_cache(maxsize=4096)
def address_text(ip: IPAddress) -> str:
    """``str(ip)``, remembered: formatting an IPv6 address is slow in ``ipaddress``, and a
    10,000-port sandbox formats its handful of addresses 20,000 times each when it writes its
    rules and rows; that was a third of ``run -d``'s work at 10,000 ports (#11)."""
    return str(ip)


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> IPAddress:
    """``ipaddress.ip_address``, remembered: a 10,000-port sandbox's 20,000 rows hold a handful
    of distinct addresses, and parsing each anew was most of the cost of reading it back (#11)."""
    return ipaddress.ip_address(text)


@dataclass(frozen=True, slots=True)
class Network:
    """A bridge network as recorded in state."""

    name: str
    bridge: str
    subnet4: ipaddress.IPv4Network
    gateway4: ipaddress.IPv4Address
    subnet6: ipaddress.IPv6Network | None = None
    gateway6: ipaddress.IPv6Address | None = None
    internal: bool = False


@dataclass(frozen=True, slots=True)
class Sandbox:
    """A sandbox as recorded in state (what exists, or is being created)."""

    id: str  # 12 hex chars, like Docker's short IDs; tags every kernel object we create
    name: str
    network: str  # network name, or "host" / "none"
    netns: str | None  # /run/netns/pw-<name>, None for host networking
    veth: str | None  # host-side veth name
    ip4: ipaddress.IPv4Address | None = None
    ip6: ipaddress.IPv6Address | None = None
    mac: str | None = None
    publish_mode: str = "nat"
    mappings: tuple[Mapping, ...] = field(default=())
