"""The firewall seam: what a kernel backend must do, and the one ``Firewall`` built over it.

``Backend`` is the kernel side, as small as it can be: apply one atomic batch of nft JSON
commands, say the ruleset generation, read the table back, hold the host-wide table lock, flush conntrack entries, and keep
dockerd's DOCKER-USER chain open for our bridges. Two implement it: ``nft.NftBackend`` (the nft,
conntrack and iptables tools) and ``fake.FakeBackend`` (an in-memory table that records every
transaction, for tests without root). ``Firewall`` (written in ``ops``) is every high-level
operation over either; the engine, the publishers and the CNI plugin are handed one, as netavark
hands its network drivers a firewall driver. ``default_firewall`` builds the kernel one.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from .ops import Firewall

__all__ = ["Backend", "Firewall", "default_firewall"]


class Backend(Protocol):
    """The kernel operations ``Firewall`` needs, for the one table ``inet portwright``."""

    def apply(self, cmds: list[dict[str, Any]]) -> int:
        """Apply ``cmds`` (libnftables JSON commands) as ONE atomic transaction: all or nothing.
        Raises KernelError (or NeedRoot, MissingTool) when the kernel refuses any of them.
        Returns how many commits that took in the kernel (``generation`` moved by that much)."""
        ...

    def generation(self) -> tuple[int, int] | None:
        """(namespace cookie, ruleset generation): the same pair twice means nothing was committed
        in between (``verified``). None when it cannot be known (then every check reads)."""
        ...

    def read(self) -> dict[str, Any]:
        """The table as ``nft -j list table inet portwright`` gives it; ``{}`` when absent."""
        ...

    def read_table(self, family: str, table: str) -> dict[str, Any]:
        """Another table of ours (``bridge portwright``, ``firewall.antispoof``) as nft lists
        it; ``{}`` when absent."""
        ...

    def lock(self) -> AbstractContextManager[None]:
        """The host-wide table lock, held from a read until what was decided from it is applied.
        Not re-entrant."""
        ...

    def require_conntrack(self) -> None:
        """Raise MissingTool when conntrack entries cannot be flushed here."""
        ...

    def flush_conntrack_ports(self, proto: str, ports: Sequence[int]) -> None:
        """Delete conntrack entries whose original destination port is one of ``ports``."""
        ...

    def flush_conntrack_addrs(self, addrs: Sequence[str]) -> None:
        """Delete conntrack entries to or from these addresses; none found is not an error."""
        ...

    def docker_user_sync(self, bridges: list[str]) -> None:
        """Make DOCKER-USER (where dockerd made it) accept exactly ``bridges``."""
        ...

    def host_rules_in_nftables(self) -> bool:
        """Does every change to what ``docker_user_sync`` reads (iptables rules, firewalld's
        table) move ``generation``? Then a sync that changed nothing need not run again until
        the generation moves."""
        ...


def default_firewall(netns: str | None = None) -> Firewall:
    """The kernel firewall: nftables in this network namespace, or in ``netns`` (or in the one
    ``PORTWRIGHT_FW_NETNS`` names, for tests)."""
    from .nft import NftBackend  # the tools are loaded only by whoever touches the kernel

    return Firewall(NftBackend(netns))
