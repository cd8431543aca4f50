"""The nftables backend: nft transactions, table reads, the table lock, conntrack flushes.

``NftBackend`` implements ``backend.Backend`` with the system's tools: ``run`` applies a batch
with ``nft -j -f -`` (one atomic transaction per call), ``table_json`` reads ``nft -j list table
inet portwright`` back, ``table_lock`` is the host-wide lock (flock), ``conntrack -D`` flushes
stale entries and ``hostfw`` keeps the host's FORWARD-DROP chains (DOCKER-USER, ufw's or a hardened
filter FORWARD) accepting our bridges, with iptables. It holds no state: the owner
tags in the table are the record, so unpublish and owners work after a crash with nothing else
to go on. The operations themselves (publish with its clash check, unpublish, networks, ...) are
written once, over any backend, in ``ops.Firewall``, which holds ``TABLE_LOCK`` from each read
until what it decided from it is applied.

Every tool runs through ``kernel.runner`` (a missing tool names its package, a hung one times
out) and takes ``netns``: when given (or when ``PORTWRIGHT_FW_NETNS`` is set) it runs under
``ip netns exec NETNS``, so tests can work on a throwaway namespace's table without touching
the host's.

nft 1.0.6 (Debian 12) cannot parse a map with a concatenated data type ("addr . port") from
JSON: it silently creates a plain set. ``run`` therefore creates such maps first with one
``nft -f -`` text transaction (``add`` is idempotent and an empty map changes no packet), then
applies the whole JSON batch atomically.

Compatibility surface: the module-level ``ensure_base``, ``add_network``, ``remove_network``,
``networks``, ``publish``, ``unpublish``, ``owners``, ``remove_table`` and ``docker_user_sync``
are thin wrappers over ``Firewall(NftBackend(netns))`` (what ``backend.default_firewall``
returns), kept while callers move to a Firewall they are handed. New code takes a Firewall.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from portwright.errors import KernelError, NeedRoot, PortwrightError
from portwright.firewall import hostfw, nfttext, rules
from portwright.firewall.ops import Firewall
from portwright.kernel import netlink, netns, nftevents, runner
from portwright.model import Mapping, Network

__all__ = [
    "NftBackend",
    "run",
    "table_json",
    "table_lock",
    "flush_conntrack",
    "flush_conntrack_ports",
    "flush_conntrack_addrs",
    "NETNS_ENV",
    "TABLE_LOCK",
    # the compatibility surface (see the module docstring)
    "ensure_base",
    "add_network",
    "remove_network",
    "publish",
    "unpublish",
    "owners",
    "networks",
    "remove_table",
    "docker_user_sync",
]

NETNS_ENV = "PORTWRIGHT_FW_NETNS"  # run every tool in this network namespace (tests)
NFT_TIMEOUT = 120.0  # seconds; 10,000 elements take about a second, so this only catches hangs
CONNTRACK_TIMEOUT = 30.0
# Host-wide, not under PORTWRIGHT_STATE_DIR: every portwright (any state dir, the CNI plugin)
# shares the host's table. One lock for every namespace's table: held for one transaction.
TABLE_LOCK = "/run/portwright/nft.lock"


def _netns(netns: str | None) -> str | None:
    return netns if netns is not None else (os.environ.get(NETNS_ENV) or None)


def _nft_error(p: runner.CompletedProcess[str], what: str) -> KernelError | NeedRoot:
    detail = " ".join(
        line.strip()
        for line in (p.stderr or "").splitlines()
        if line.strip() and not set(line.strip()) <= {"^", "~"}
    )
    if "Operation not permitted" in detail:
        return NeedRoot(f"changing nftables ({what})")
    if p.returncode < 0:
        detail = f"nft crashed with signal {-p.returncode}. {detail}"
    return KernelError(what, detail or f"exit status {p.returncode}")


# ------------------------------------------------------------------------------------------------
# Transactions and reads
# ------------------------------------------------------------------------------------------------


def _concat_map_text(cmd: dict[str, Any]) -> str | None:
    """``add map`` with a concatenated data type, as nft text (see the module docstring)."""
    body = cmd.get("add", {}).get("map")
    if not isinstance(body, dict) or not isinstance(body.get("map"), list):
        return None
    key = body["type"] if isinstance(body["type"], list) else [body["type"]]
    return (
        f"add map {body['family']} {body['table']} {body['name']} "
        f"{{ type {' . '.join(key)} : {' . '.join(body['map'])} ; }}"
    )


def _typeof_set_text(cmd: dict[str, Any]) -> str | None:
    """``add set`` with a ``typeof`` key (``antispoof.TYPEOF``: a raw payload JSON cannot type),
    as nft text. Like the concat maps: an empty set, created ahead, changes no packet."""
    body = cmd.get("add", {}).get("set")
    if not isinstance(body, dict) or not isinstance(body.get("typeof"), str):
        return None
    return f"add set {body['family']} {body['table']} {body['name']} {{ typeof {body['typeof']} ; }}"


def _prelude_text(cmd: dict[str, Any]) -> tuple[str, str, str] | None:
    """(family, table, text) of a command that must be created from text first, else None."""
    for kind, text in (("map", _concat_map_text(cmd)), ("set", _typeof_set_text(cmd))):
        if text:
            body = cmd["add"][kind]
            return body["family"], body["table"], text
    return None


def run(cmds: list[dict[str, Any]], *, netns: str | None = None) -> int:
    """Apply ``cmds`` as ONE atomic nft transaction (nothing changes if any command fails).
    Returns the number of kernel commits made: 2 when concatenated maps were created first."""
    if not cmds:
        return 0
    text = nfttext.elements_text(cmds)  # elements only: nft reads its text syntax faster (#11)
    if text is not None:
        p = runner.run(["nft", "-f", "-"], input=text, netns=_netns(netns), timeout=NFT_TIMEOUT)
        if p.returncode != 0:
            raise _nft_error(p, "nft -f -")
        return 1
    commits = 0
    pre = [t for t in (_prelude_text(c) for c in cmds) if t]
    if pre:
        tables = sorted({(f, t) for f, t, _ in pre})
        text = "\n".join([*(f"add table {f} {t}" for f, t in tables), *(x for _, _, x in pre)]) + "\n"
        p = runner.run(["nft", "-f", "-"], input=text, netns=_netns(netns), timeout=NFT_TIMEOUT)
        if p.returncode != 0:
            raise _nft_error(p, "nft add map")
        commits += 1
        cmds = [c for c in cmds if not _prelude_text(c)]
    payload = json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]})
    p = runner.run(["nft", "-j", "-f", "-"], input=payload, netns=_netns(netns), timeout=NFT_TIMEOUT)
    if p.returncode != 0:
        raise _nft_error(p, "nft -j -f -")
    return commits + 1


def table_json(
    *, netns: str | None = None, family: str = rules.FAMILY, table: str = rules.TABLE
) -> dict[str, Any]:
    """``nft -j list table inet portwright`` (or ``family table``), parsed; ``{}`` when the
    table does not exist."""
    p = runner.run(["nft", "-j", "list", "table", family, table], netns=_netns(netns), timeout=NFT_TIMEOUT)
    if p.returncode != 0:
        if "No such file or directory" in p.stderr:
            return {}
        raise _nft_error(p, f"nft list table {family} {table}")
    data = json.loads(p.stdout)
    if not isinstance(data, dict):
        raise KernelError("nft -j list table", "output is not a JSON object")
    return data


@contextlib.contextmanager
def table_lock() -> Iterator[None]:
    """Hold ``TABLE_LOCK`` from reading the table until what was decided from it is applied."""
    try:
        os.makedirs(os.path.dirname(TABLE_LOCK), mode=0o755, exist_ok=True)
        fd = os.open(TABLE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise NeedRoot(f"changing nftables (opening the lock {TABLE_LOCK})") from None
        raise KernelError(f"open {TABLE_LOCK}", str(e.strerror), e.errno) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ------------------------------------------------------------------------------------------------
# conntrack
# ------------------------------------------------------------------------------------------------

_DPORT = re.compile(r"\bdport=(\d+)")
_NOTHING_DELETED = "0 flow entries have been deleted"


def flush_conntrack(proto: str, port: int, *, netns: str | None = None) -> None:
    """Delete conntrack entries whose original destination port is ``port`` (IPv4 and IPv6).

    Finding none is not an error.
    """
    for family in ("ipv4", "ipv6"):
        p = runner.run(
            ["conntrack", "-D", "-f", family, "-p", proto, "--orig-port-dst", str(port)],
            netns=_netns(netns),
            timeout=CONNTRACK_TIMEOUT,
        )
        if p.returncode != 0 and _NOTHING_DELETED not in p.stderr:
            if "Operation not permitted" in p.stderr:
                raise NeedRoot("flushing conntrack entries")
            raise KernelError(f"conntrack -D -p {proto} --orig-port-dst {port}", p.stderr)


def _ports_with_entries(proto: str, ports: Iterable[int], netns: str | None) -> set[int]:
    wanted = set(ports)
    found: set[int] = set()
    for family in ("ipv4", "ipv6"):
        p = runner.run(
            ["conntrack", "-L", "-f", family, "-p", proto], netns=_netns(netns), timeout=CONNTRACK_TIMEOUT
        )
        if p.returncode != 0:
            if "Operation not permitted" in p.stderr:
                raise NeedRoot("listing conntrack entries")
            raise KernelError(f"conntrack -L -p {proto}", p.stderr)
        for line in p.stdout.splitlines():
            m = _DPORT.search(line)  # the first dport= is the original direction's
            if m and int(m.group(1)) in wanted:
                found.add(int(m.group(1)))
    return found


def flush_conntrack_ports(proto: str, ports: Sequence[int], *, netns: str | None = None) -> None:
    """``flush_conntrack`` for many ports: one listing per family, deletions only where needed."""
    if len(ports) <= 2:
        for port in ports:
            flush_conntrack(proto, port, netns=netns)
        return
    for port in sorted(_ports_with_entries(proto, ports, netns)):
        flush_conntrack(proto, port, netns=netns)


def flush_conntrack_addrs(addrs: Sequence[str], *, netns: str | None = None) -> None:
    """Delete conntrack entries of flows that go to these sandbox addresses. One match covers
    both kinds: the reply source is the sandbox whether a flow was aimed at it directly or DNATed
    to it. Finding none is not an error; a host without the conntrack tool is skipped."""
    if not runner.available("conntrack"):
        return
    for addr in addrs:
        family = "ipv6" if ":" in addr else "ipv4"
        p = runner.run(
            ["conntrack", "-D", "-f", family, "--reply-src", addr],
            netns=_netns(netns),
            timeout=CONNTRACK_TIMEOUT,
        )
        if p.returncode != 0 and _NOTHING_DELETED not in p.stderr:
            if "Operation not permitted" in p.stderr:
                raise NeedRoot("flushing conntrack entries")
            raise KernelError(f"conntrack -D --reply-src {addr}", p.stderr)


# ------------------------------------------------------------------------------------------------
# The backend
# ------------------------------------------------------------------------------------------------


class NftBackend:
    """``backend.Backend`` over nft, conntrack and iptables, in this namespace or in ``netns``
    (``None``: the one ``PORTWRIGHT_FW_NETNS`` names, if any, looked up at each call)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def apply(self, cmds: list[dict[str, Any]]) -> int:
        return run(cmds, netns=self.netns)

    def generation(self) -> tuple[int, int] | None:
        ns = _netns(self.netns)
        if ns is None:
            return nftevents.generation()
        try:
            return netns.run_in(netlink.netns_path(ns), nftevents.generation)
        except PortwrightError:
            return None  # the namespace is gone: the next transaction will say so

    def read(self) -> dict[str, Any]:
        return table_json(netns=self.netns)

    def read_table(self, family: str, table: str) -> dict[str, Any]:
        return table_json(netns=self.netns, family=family, table=table)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return table_lock()

    def require_conntrack(self) -> None:
        runner.require("conntrack")

    def flush_conntrack_ports(self, proto: str, ports: Sequence[int]) -> None:
        flush_conntrack_ports(proto, ports, netns=self.netns)

    def flush_conntrack_addrs(self, addrs: Sequence[str]) -> None:
        flush_conntrack_addrs(addrs, netns=self.netns)

    def docker_user_sync(self, bridges: list[str]) -> None:
        # DOCKER-USER where dockerd made it, else the host's filter FORWARD when it drops (ufw).
        hostfw.sync(bridges, netns=self.netns)

    def host_rules_in_nftables(self) -> bool:
        return hostfw.rules_in_nftables()


# ------------------------------------------------------------------------------------------------
# Compatibility surface: the Firewall operations as module functions (see the module docstring)
# ------------------------------------------------------------------------------------------------


def _firewall(netns: str | None) -> Firewall:
    return Firewall(NftBackend(netns))  # what backend.default_firewall(netns) returns


def ensure_base(*, netns: str | None = None) -> None:
    _firewall(netns).ensure_base()


def add_network(net: Network, *, netns: str | None = None) -> None:
    _firewall(netns).add_network(net)


def remove_network(name: str, *, netns: str | None = None) -> None:
    _firewall(netns).remove_network(name)


def networks(*, netns: str | None = None) -> set[str]:
    return _firewall(netns).networks()


def publish(
    owner: str, mappings: Sequence[Mapping], *, netns: str | None = None, flush_udp: bool = True
) -> None:
    _firewall(netns).publish(owner, mappings, flush_udp=flush_udp)


def unpublish(owner: str, *, netns: str | None = None) -> None:
    _firewall(netns).unpublish(owner)


def owners(*, netns: str | None = None) -> set[str]:
    return _firewall(netns).owners()


def remove_table(*, netns: str | None = None, force: bool = False) -> None:
    _firewall(netns).remove_table(force=force)


def docker_user_sync(bridges: Sequence[str], *, netns: str | None = None) -> None:
    _firewall(netns).sync_docker_user(bridges)
