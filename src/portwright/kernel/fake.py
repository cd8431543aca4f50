"""An in-memory host kernel for tests without root: it records the namespaces, links and cgroups that
the engine creates and removes, refuses what the real kernel would refuse (a netns or link that
exists already, deleting one that does not), and fails on request (``fail_on``) to test rollback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import KernelError


@dataclass
class FakeHost:
    netns: set[str] = field(default_factory=set)
    links: dict[str, str | None] = field(default_factory=dict)  # name -> netns or bridge it joined
    veth_ns: dict[str, str] = field(default_factory=dict)
    cgroups: set[str] = field(default_factory=set)
    killed: list[str] = field(default_factory=list)  # cgroups killed, in order
    calls: list[str] = field(default_factory=list)
    fail_on: set[str] = field(default_factory=set)  # operation names that raise KernelError
    prefixes: list[str] = field(default_factory=list)
    ipv6: bool = True

    def _op(self, name: str, *detail: str) -> None:
        self.calls.append(" ".join((name, *detail)))
        if name in self.fail_on:
            raise KernelError(name, "injected failure")

    def require_root(self, what: str) -> None:
        """Nothing here touches the kernel: no root needed."""

    def used_prefixes(self) -> list[str]:
        return list(self.prefixes)

    def ipv6_enabled(self) -> bool:
        return self.ipv6

    def create_bridge(self, name: str, addrs: list[str], internal: bool, ipv6: bool) -> None:
        self._op("create_bridge", name)
        if name in self.links:
            raise KernelError(f"ip link add {name}", "File exists")
        self.links[name] = None

    def delete_link(self, name: str) -> None:
        self._op("delete_link", name)
        self.links.pop(name, None)  # as netlink.delete_link: a missing link is already gone

    def netns_path(self, name: str) -> str:
        return f"/run/netns/{name}"

    def netns_add(self, name: str) -> None:
        self._op("netns_add", name)
        if name in self.netns:
            raise KernelError(f"ip netns add {name}", "File exists")
        self.netns.add(name)

    def netns_delete(self, name: str) -> None:
        self._op("netns_delete", name)
        self.netns.discard(name)  # idempotent, as netlink.netns_delete
        for veth in [v for v, ns in self.veth_ns.items() if ns == name]:
            self.links.pop(veth, None)  # a veth pair dies with its peer's namespace
            del self.veth_ns[veth]

    def create_veth(self, veth: str, ns: str, bridge: str, mac: str | None) -> None:
        self._op("create_veth", veth)
        if veth in self.links:
            raise KernelError(f"ip link add {veth}", "File exists")
        if ns not in self.netns or bridge not in self.links:
            raise KernelError(f"ip link add {veth}", "no such netns or bridge")
        self.links[veth] = bridge
        self.veth_ns[veth] = ns

    def configure_sandbox(
        self, ns: str, addr4: str | None, gw4: str | None, addr6: str | None, gw6: str | None
    ) -> None:
        self._op("configure_sandbox", ns)

    def cgroup_path(self, sandbox_id: str) -> str | None:
        return f"/fake/cgroup/portwright/{sandbox_id}"

    def cgroup_create(self, sandbox_id: str) -> str | None:
        self._op("cgroup_create", sandbox_id)
        path = self.cgroup_path(sandbox_id)
        assert path is not None
        self.cgroups.add(path)
        return path

    def cgroup_kill(self, path: str | None) -> list[str]:
        if path is not None and path in self.cgroups:
            self.cgroups.discard(path)
            self.killed.append(path)
        return []

    def leftovers(self) -> dict[str, object]:
        """What still exists: empty when everything made was removed."""
        return {
            k: v for k, v in (("netns", self.netns), ("links", self.links), ("cgroups", self.cgroups)) if v
        }
