"""Integration fixtures: root-only, real namespaces, cleanup even when a test fails.

``external``: a namespace that plays "another machine", routed to the host over a veth, so
traffic arrives through PREROUTING/FORWARD as real ingress does. Addresses come from the
benchmarking range (198.19.254.0/24 and 2001:2:ffff::/64), never from anywhere else.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import pwstate

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration tests need root (real namespaces, nftables)")
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _pins_watch(request: pytest.FixtureRequest) -> Iterator[None]:
    """Remember after which test each bpffs pin dir appeared, so that the session end can name
    the test that leaked one (tests/pwstate.py; reading a directory, nothing else)."""
    before = pwstate.pin_dirs()
    yield
    pwstate.note(before, pwstate.pin_dirs(), request.node.nodeid)


def _identity() -> tuple[bytes, bytes]:
    """This (the test) process's comm and command line, as `who`, ps and ss -p read them."""
    with open("/proc/self/comm", "rb") as c, open("/proc/self/cmdline", "rb") as a:
        return c.read(), a.read()


@pytest.fixture(autouse=True)
def _identity_kept() -> Iterator[None]:
    """A test that calls portwright in-process must not rename the test process: once it is
    titled ``portwright ...``, `who` rightly reports later tests' own sockets as portwright's. Fail
    the test that did it, not the later one that trips over it."""
    before = _identity()
    yield
    after = _identity()
    assert after == before, f"the test renamed the test process: {before!r} -> {after!r}"


def sh(
    *args: str, check: bool = True, ns: str | None = None, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command (optionally inside ``ip netns exec NS``), capturing text output."""
    cmd = list(args)
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, input=input)


@dataclass
class External:
    """Another machine: ``ns`` runs clients, reaching the host at ``host4``/``host6``."""

    ns: str
    veth: str
    addr4: ipaddress.IPv4Address
    host4: ipaddress.IPv4Address
    addr6: ipaddress.IPv6Address
    host6: ipaddress.IPv6Address

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh(*args, ns=self.ns, check=check, timeout=timeout)


def routed_ns(
    ns: str,
    veth: str,
    v4: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address, int],
    v6: tuple[ipaddress.IPv6Address, ipaddress.IPv6Address, int],
) -> None:
    """A namespace joined to the host by a veth: (host end, namespace end, prefix length) per
    family, and default routes from the namespace via the host. The caller deletes veth and ns."""
    (host4, addr4, len4), (host6, addr6, len6) = v4, v6
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "addr", "add", f"{host4}/{len4}", "dev", veth)
    sh("ip", "-6", "addr", "add", f"{host6}/{len6}", "dev", veth, "nodad")
    sh("ip", "link", "set", veth, "up")
    sh("ip", "addr", "add", f"{addr4}/{len4}", "dev", "eth0", ns=ns)
    sh("ip", "-6", "addr", "add", f"{addr6}/{len6}", "dev", "eth0", "nodad", ns=ns)
    sh("ip", "link", "set", "eth0", "up", ns=ns)
    sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("ip", "route", "add", "default", "via", str(host4), ns=ns)
    sh("ip", "-6", "route", "add", "default", "via", str(host6), ns=ns)


_ext_counter = iter(range(1, 60))


@pytest.fixture
def external() -> Iterator[External]:
    n = next(_ext_counter)
    tag = secrets.token_hex(3)
    ns, veth = f"pwt-ext-{tag}", f"pwtx{tag}"
    host4 = ipaddress.IPv4Address(f"198.19.254.{4 * n + 1}")
    addr4 = host4 + 1
    host6 = ipaddress.IPv6Address(f"2001:2:ffff:{n:x}::1")
    addr6 = host6 + 1
    try:
        routed_ns(ns, veth, (host4, addr4, 30), (host6, addr6, 64))
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        yield External(ns=ns, veth=veth, addr4=addr4, host4=host4, addr6=addr6, host6=host6)
    finally:
        sh("ip", "link", "del", veth, check=False)
        sh("ip", "netns", "del", ns, check=False)


def need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (apt-get install {package})")
