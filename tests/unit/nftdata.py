"""Shared test data for the firewall tests: two networks, a Mapping builder and a Firewall over a
fake backend already holding the base table and the ``web`` network (no I/O)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend
from portwright.model import Mapping, Network

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
A = ipaddress.ip_address

WEB = Network(
    name="web",
    bridge="pwbr0",
    subnet4=ipaddress.IPv4Network("198.18.5.0/24"),
    gateway4=ipaddress.IPv4Address("198.18.5.1"),
    subnet6=ipaddress.IPv6Network("2001:2:5::/64"),
    gateway6=ipaddress.IPv6Address("2001:2:5::1"),
)
DB = Network(
    name="db",
    bridge="pwbr1",
    subnet4=ipaddress.IPv4Network("198.18.6.0/24"),
    gateway4=ipaddress.IPv4Address("198.18.6.1"),
    internal=True,
)


def m(proto: str, host: str, hport: int, cont: str, cport: int) -> Mapping:
    return Mapping(
        proto=proto,
        host_ip=A(host),
        host_port=hport,
        container_ip=A(cont),  # type: ignore[arg-type]
        container_port=cport,
    )


def web_firewall(backend: FakeBackend) -> Firewall:
    """A Firewall over ``backend`` with the base table and the WEB network in place."""
    fw = Firewall(backend)
    fw.ensure_base()
    fw.add_network(WEB)
    return fw
