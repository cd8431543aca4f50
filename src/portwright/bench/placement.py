"""Client placement: where the load generator runs.

``local``: on the host itself, as in the article (traffic enters through OUTPUT and loopback).
``external``: in a namespace of its own, routed to the host over a veth, so that traffic arrives
as real ingress does, through PREROUTING and FORWARD. This module owns that namespace: it creates
it with addresses from 198.19.253.0/24 (a benchmarking range), turns on forwarding for the
duration, and removes everything again, restoring the sysctls it changed.
"""

from __future__ import annotations

import ipaddress
import os
import secrets

from ..errors import KernelError
from .driver import run

PLACEMENTS = ("local", "external")
# A /30 per external client inside 198.19.253.0/24 (RFC 2544 benchmarking space).
EXTERNAL_POOL = ipaddress.IPv4Network("198.19.253.0/24")
# Forwarding must be on for routed ingress; restored afterwards to what it was.
FORWARD_SYSCTL = "/proc/sys/net/ipv4/ip_forward"


def _ip(*args: str) -> None:
    p = run(["ip", *args], timeout=30)
    if not p.ok:
        raise KernelError(f"ip {' '.join(args)}", p.stderr or p.stdout)


class ExternalClient:
    """A namespace that plays another machine; ``host_addr`` is how it reaches the host."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or secrets.token_hex(3)
        self.ns = f"pwb-ext-{self.tag}"
        self.veth = f"pwbx{self.tag}"[:15]
        block = secrets.randbelow(EXTERNAL_POOL.num_addresses // 4)
        base = EXTERNAL_POOL.network_address + 4 * block
        self.host_addr = str(base + 1)
        self.client_addr = str(base + 2)
        self._old_forward: str | None = None
        self.created = False

    def create(self) -> None:
        self.created = True
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        _ip("addr", "add", f"{self.host_addr}/30", "dev", self.veth)
        _ip("link", "set", self.veth, "up")
        _ip("-n", self.ns, "addr", "add", f"{self.client_addr}/30", "dev", "eth0")
        _ip("-n", self.ns, "link", "set", "eth0", "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip("-n", self.ns, "route", "add", "default", "via", self.host_addr)
        with open(FORWARD_SYSCTL, encoding="ascii") as f:
            self._old_forward = f.read().strip()
        if self._old_forward != "1":
            with open(FORWARD_SYSCTL, "w", encoding="ascii") as f:
                f.write("1")

    def wrap(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def remove(self) -> list[str]:
        errors: list[str] = []
        if not self.created:
            return errors
        for args in (["link", "del", self.veth], ["netns", "del", self.ns]):
            p = run(["ip", *args], timeout=30)
            if not p.ok and "Cannot find" not in p.stderr and "No such" not in p.stderr:
                errors.append(f"ip {' '.join(args)}: {p.stderr.strip()}")
        if self._old_forward is not None and self._old_forward != "1":
            try:
                with open(FORWARD_SYSCTL, "w", encoding="ascii") as f:
                    f.write(self._old_forward)
            except OSError as e:
                errors.append(f"restoring {FORWARD_SYSCTL}: {e}")
        self.created = False
        return errors


def namespace_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")
