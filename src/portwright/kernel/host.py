"""The host kernel as the engine sees it: one object with the few operations a sandbox's life needs.

The engine is handed a ``Host`` (as it is handed a firewall), so it can be unit-tested against
``kernel.fake.FakeHost`` without root. ``LinuxHost`` does the real work through ``netlink`` (iproute2),
``sysctl``, ``netns`` and ``cgroup``; it adds no logic of its own.
"""

from __future__ import annotations

import os
from typing import Protocol

from ..errors import NeedRoot, PortwrightError
from . import cgroup, netlink, netns, sysctl


class Host(Protocol):
    def require_root(self, what: str) -> None: ...
    def used_prefixes(self) -> list[str]: ...
    def ipv6_enabled(self) -> bool: ...
    def create_bridge(self, name: str, addrs: list[str], internal: bool, ipv6: bool) -> None: ...
    def delete_link(self, name: str) -> None: ...
    def netns_path(self, name: str) -> str: ...
    def netns_add(self, name: str) -> None: ...
    def netns_delete(self, name: str) -> None: ...
    def create_veth(self, veth: str, ns: str, bridge: str, mac: str | None) -> None: ...
    def configure_sandbox(
        self, ns: str, addr4: str | None, gw4: str | None, addr6: str | None, gw6: str | None
    ) -> None: ...
    def cgroup_create(self, sandbox_id: str) -> str | None: ...
    def cgroup_kill(self, path: str | None) -> list[str]: ...
    def cgroup_path(self, sandbox_id: str) -> str | None: ...


class LinuxHost:
    """The real kernel."""

    def require_root(self, what: str) -> None:
        if os.geteuid() != 0:
            raise NeedRoot(what)

    def used_prefixes(self) -> list[str]:
        return netlink.used_prefixes()

    def ipv6_enabled(self) -> bool:
        return sysctl.ipv6_enabled()

    def create_bridge(self, name: str, addrs: list[str], internal: bool, ipv6: bool) -> None:
        netlink.create_bridge(name, addrs)
        # route_localnet: 127.0.0.1:P is DNATed to the bridge (Docker sets it on docker0 too).
        sysctl.ensure(sysctl.ROUTE_LOCALNET.format(dev=name), "1")
        if not internal:
            sysctl.ensure(sysctl.IP_FORWARD, "1")
            if ipv6:
                sysctl.ensure(sysctl.IP6_FORWARD, "1")

    def delete_link(self, name: str) -> None:
        netlink.delete_link(name)

    def netns_path(self, name: str) -> str:
        return netlink.netns_path(name)

    def netns_add(self, name: str) -> None:
        netlink.netns_add(name)

    def netns_delete(self, name: str) -> None:
        netlink.netns_delete(name)

    def create_veth(self, veth: str, ns: str, bridge: str, mac: str | None) -> None:
        netlink.create_veth(veth, ns, bridge, mac)

    def configure_sandbox(
        self, ns: str, addr4: str | None, gw4: str | None, addr6: str | None, gw6: str | None
    ) -> None:
        if addr4 is None and addr6 is None:
            netlink.ip("link", "set", "lo", "up", ns=ns)
        else:
            netlink.configure_sandbox_ns(ns, addr4, gw4, addr6, gw6)

        def inner() -> None:
            # Like Docker: servers in a sandbox may bind ports below 1024 without extra caps.
            try:
                sysctl.write(sysctl.UNPRIV_PORT_START, "0")
                sysctl.write(sysctl.PING_GROUP_RANGE, sysctl.PING_GROUP_ALL)
            except PortwrightError:
                pass

        netns.run_in(netlink.netns_path(ns), inner)

    def cgroup_create(self, sandbox_id: str) -> str | None:
        return cgroup.create(sandbox_id)

    def cgroup_kill(self, path: str | None) -> list[str]:
        return cgroup.kill(path)

    def cgroup_path(self, sandbox_id: str) -> str | None:
        return cgroup.sandbox_path(sandbox_id)
