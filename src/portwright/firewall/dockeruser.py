"""Coexistence with dockerd: ACCEPT rules for our bridges in Docker's DOCKER-USER chain.

dockerd sets the iptables filter FORWARD policy to DROP. Netfilter drops a packet that any
base chain drops, so our own ``inet portwright`` forward chain cannot let published traffic
through on such a host by itself. Docker documents one hook for this: the DOCKER-USER chain,
jumped to first from FORWARD. ``docker_user_sync`` keeps exactly one ACCEPT rule per direction
per portwright bridge there, each tagged with the iptables comment "portwright", and removes
them all when given no bridges. Our nft forward chain still does the real filtering (only
published ports in, isolation between networks); these rules only stop Docker's policy from
overriding it. No other Docker chain is ever touched, and nothing is created when DOCKER-USER
does not exist (no dockerd, or dockerd without iptables management).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

from portwright.errors import KernelError, NeedRoot
from portwright.kernel import runner

CHAIN = "DOCKER-USER"
COMMENT = "portwright"
# Bridges made by a CNI interface plugin (cni0, podman's cni-podman0): added by portwright-cni's ADD,
# removed by the DEL that leaves no other interface on the bridge (or by any DEL once the bridge
# is gone). A separate tag, so the engine's sync never removes them.
CNI_COMMENT = "portwright-cni"
TOOLS = ("iptables", "ip6tables")  # the same backend dockerd uses (iptables-nft on Debian 12)
NETNS_ENV = "PORTWRIGHT_FW_NETNS"
IPTABLES_TIMEOUT = 60.0  # seconds; -w 10 waits for the xtables lock, so this only catches hangs


def _ns(netns: str | None) -> str | None:
    return netns if netns is not None else (os.environ.get(NETNS_ENV) or None)


def _run(tool: str, args: list[str], netns: str | None) -> runner.CompletedProcess[str]:
    # -w: wait for the xtables lock (dockerd may hold it) rather than fail at once.
    return runner.run([tool, "-w", "10", *args], netns=_ns(netns), timeout=IPTABLES_TIMEOUT)


def rule_specs(bridges: Sequence[str], comment: str = COMMENT) -> list[list[str]]:
    """The rules we want in DOCKER-USER, in ``iptables -S`` order so they compare exactly."""
    specs: list[list[str]] = []
    for br in sorted(set(bridges)):
        for flag in ("-i", "-o"):
            specs.append([flag, br, "-m", "comment", "--comment", comment, "-j", "ACCEPT"])
    return specs


def _ours(listing: str, comment: str = COMMENT) -> list[list[str]]:
    """Our rules in an ``iptables -S DOCKER-USER`` listing (recognised by the comment)."""
    out: list[list[str]] = []
    for line in listing.splitlines():
        words = shlex.split(line)
        if len(words) > 2 and words[:2] == ["-A", CHAIN] and "--comment" in words:
            if words[words.index("--comment") + 1] == comment:
                out.append(words[2:])
    return out


def _link_exists(dev: str, netns: str | None) -> bool:
    ns = _ns(netns)
    if ns is None:
        return os.path.exists(f"/sys/class/net/{dev}")
    return runner.run(["ip", "-n", ns, "link", "show", "dev", dev]).returncode == 0


def _listings(netns: str | None) -> list[tuple[str, str]]:
    """(tool, ``-S DOCKER-USER`` listing) for each family where dockerd made the chain."""
    out: list[tuple[str, str]] = []
    for tool in TOOLS:
        if not runner.available(tool):
            continue  # no such tool: dockerd cannot have made the chain with it either
        listing = _run(tool, ["-t", "filter", "-S", CHAIN], netns)
        if listing.returncode != 0:
            if "Permission denied" in listing.stderr or "Operation not permitted" in listing.stderr:
                raise NeedRoot(f"reading {tool} chain {CHAIN}")
            continue  # the chain does not exist: dockerd is not managing this family
        out.append((tool, listing.stdout))
    return out


def docker_user_ensure(
    bridges: Sequence[str], *, comment: str = CNI_COMMENT, netns: str | None = None
) -> None:
    """Add (never remove) ACCEPT rules for ``bridges`` tagged ``comment``; idempotent."""
    want = rule_specs(bridges, comment)
    for tool, listing in _listings(netns):
        have = _ours(listing, comment)
        for spec in reversed(want):
            if spec not in have:
                _checked(tool, ["-t", "filter", "-I", CHAIN, "1", *spec], netns)


def docker_user_forget_missing(*, comment: str = CNI_COMMENT, netns: str | None = None) -> None:
    """Remove the ``comment``-tagged rules whose bridge no longer exists."""
    for tool, listing in _listings(netns):
        for spec in _ours(listing, comment):
            if not _link_exists(spec[1], netns):
                _checked(tool, ["-t", "filter", "-D", CHAIN, *spec], netns)


def docker_user_forget(
    bridges: Sequence[str], *, comment: str = CNI_COMMENT, netns: str | None = None
) -> None:
    """Remove the ``comment``-tagged rules of ``bridges`` (idempotent): the bridge may still
    exist, but nothing of ours uses it any more."""
    gone = set(bridges)
    for tool, listing in _listings(netns):
        for spec in _ours(listing, comment):
            if spec[1] in gone:
                _checked(tool, ["-t", "filter", "-D", CHAIN, *spec], netns)


def docker_user_sync(bridges: Sequence[str], *, netns: str | None = None) -> None:
    """Make DOCKER-USER (v4 and v6, where it exists) accept exactly our ``bridges``; idempotent.

    With an empty list every rule we added is removed. Rules are inserted at the top, ahead of
    Docker's trailing RETURN and of any user rule that would drop them.
    """
    want = rule_specs(bridges)
    for tool, listing in _listings(netns):
        have = _ours(listing)
        for spec in have:
            if spec not in want:
                _checked(tool, ["-t", "filter", "-D", CHAIN, *spec], netns)
        for spec in reversed(want):
            if spec not in have:
                _checked(tool, ["-t", "filter", "-I", CHAIN, "1", *spec], netns)


def _checked(tool: str, args: list[str], netns: str | None) -> None:
    p = _run(tool, args, netns)
    if p.returncode != 0:
        raise KernelError(f"{tool} {' '.join(args)}", p.stderr or f"exit status {p.returncode}")
