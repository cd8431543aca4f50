"""Every firewall operation, written once over a ``Backend``: the ``Firewall`` object.

``rules`` says what the table must hold; a ``Backend`` (``firewall.backend``) applies one atomic
batch, reads the table back, holds the host-wide table lock and flushes conntrack. This module
is the logic between them, the same whether the backend is nftables (``nft.NftBackend``) or the
in-memory table of the tests (``fake.FakeBackend``): create the base, add and remove networks,
publish with a clash check, unpublish by owner tag, remove the table only when it is empty.

Deciding from a read and then writing is not atomic in nft, and map elements are deleted by key,
not by owner. Every operation that reads to decide what to write (publish, unpublish, the
network operations, remove_table) therefore holds the backend's lock from the read until the
write is applied: otherwise an unpublish that read its keys, while another process removed them
and a new owner published the same key, would delete the new owner's element. The lock is not
re-entrant (flock on one file), so no operation calls another while holding it.

It lives apart from ``backend`` only so that ``nft``'s module-level compatibility functions can
use it while ``backend.default_firewall`` builds the nft one, without an import circle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import BadInput, Conflict, KernelError, PortInUse
from ..model import Mapping, Network, Sandbox
from . import antispoof, health, rules, verified
from .memofile import MemoFile

if TYPE_CHECKING:
    from .backend import Backend

Cmd = dict[str, Any]
Change = Callable[[verified.Verified], verified.Verified]


def _check_owner_rules(owner: str, extra: Sequence[Cmd]) -> list[Cmd]:
    """``extra`` must add rules of our table tagged with ``owner``, so unpublish removes them."""
    tag = rules.owner_tag(owner)
    for cmd in extra:
        body = cmd.get("add", {}).get("rule") if isinstance(cmd, dict) else None
        if (
            not isinstance(body, dict)
            or body.get("comment") != tag
            or body.get("table") != rules.TABLE
            or body.get("family") != rules.FAMILY
        ):
            raise BadInput(
                f"extra firewall rule {cmd!r} of {owner} is not an added rule of table "
                f"{rules.FAMILY} {rules.TABLE} tagged {tag!r}; build it with firewall.rules"
            )
    return list(extra)


def _unchanged(v: verified.Verified) -> verified.Verified:
    """The record after a transaction that takes nothing it vouches for: one of the bridge table
    only (anti-spoofing), or the base's refresh (it adds, and rewrites only the fixed chains)."""
    return v


class Firewall:
    """The operations of portwright's one nftables table, over ``backend``.

    The engine, the publishers and the CNI plugin are handed one of these; the kernel one comes
    from ``backend.default_firewall()``, a test one from ``Firewall(FakeBackend())``.
    """

    def __init__(self, backend: Backend, memo: MemoFile | None = None) -> None:
        self.backend = backend
        # What the table was last seen to hold, by ruleset generation (``verified``): lets the
        # every-command check skip its read. None: every check reads the table.
        self.memo = memo

    def remember_in(self, path: str) -> None:
        """Keep the ``verified`` record in ``path`` (a state directory's), unless one is set."""
        if self.memo is None:
            self.memo = MemoFile(path)

    # --- the verified record -------------------------------------------------------------------

    def _vouched(self) -> verified.Verified | None:
        """The record, when it is for the generation the namespace is at now."""
        if self.memo is None:
            return None
        where = self.backend.generation()
        v = self.memo.load() if where is not None else None
        return v if v is not None and v.where == where else None

    def _apply(self, cmds: list[Cmd], change: Change | None = None) -> None:
        """Apply ``cmds`` (the caller holds the lock). With ``change``, a record current just
        before is carried forward, when our commits were the only ones (``verified.advanced``);
        without, the record goes out of date by itself (the generation moves)."""
        before = self._vouched() if change is not None else None
        commits = self.backend.apply(cmds)
        if before is not None and change is not None and self.memo is not None:
            after = self.backend.generation()
            if verified.advanced(before.where, commits, after):
                self.memo.save(change(before).at(after or before.where))

    # --- reads ---------------------------------------------------------------------------------

    def table(self) -> dict[str, Any]:
        """The table as ``nft -j list table inet portwright`` gives it; ``{}`` when absent."""
        return self.backend.read()

    def networks(self) -> set[str]:
        return rules.networks(self.backend.read())

    def owners(self) -> set[str]:
        """Every owner tag present in the table (reconcile removes those of dead owners)."""
        return rules.owners(self.backend.read())

    def published(self) -> list[rules.Published]:
        """Every element of the publish maps, with the owner tag it carries."""
        return rules.published(self.backend.read())

    # --- table and networks --------------------------------------------------------------------

    def ensure_base(self) -> None:
        """Create (or refresh) the table, chains, sets, maps and fixed rules; keeps all elements."""
        with self.backend.lock():
            self._apply(rules.base_commands(), _unchanged)

    def add_network(self, net: Network) -> None:
        """Install ``net``'s rules, replacing any it already had (one transaction)."""
        cmds = rules.network_commands(net)  # validates before touching anything
        with self.backend.lock():
            current = self.backend.read()
            base = rules.base_commands() if not current else []
            self._apply(
                base + rules.remove_network_commands(net.name, current, net) + cmds,
                lambda v: verified.with_network(v, net, bool(base)),
            )

    def remove_network(self, name: str, net: Network | None = None) -> None:
        """Remove the rules and bridge element of network ``name`` (only ``net``'s own, when
        given: ``rules.remove_network_commands``); a no-op if it has none."""
        rules.net_tag(name)  # validates before taking the lock
        with self.backend.lock():
            current = self.backend.read()
            cmds = rules.remove_network_commands(name, current, net) if current else []
            if cmds:
                self._apply(cmds, lambda v: verified.without_network(v, name))

    def remove_table(self, force: bool = False) -> None:
        """Delete the whole table. Refused while an owner or a network still has entries there."""
        with self.backend.lock():
            current = self.backend.read()
            if not current:
                return
            if not force:
                left = sorted(rules.owners(current)) + sorted("network " + n for n in rules.networks(current))
                if left:
                    raise Conflict(
                        f"table inet portwright still holds {', '.join(left[:5])}"
                        f"{' ...' if len(left) > 5 else ''}; remove those first or pass force=True"
                    )
            self._apply(rules.table_commands_delete(), lambda v: verified.Verified(v.where))

    # --- publishing ------------------------------------------------------------------------------

    def publish(
        self,
        owner: str,
        mappings: Sequence[Mapping],
        flush_udp: bool = True,
        *,
        extra_rules: Sequence[Cmd] = (),
    ) -> None:
        """Publish ``owner``'s NAT-capable mappings (one transaction), then un-stick UDP clients.

        Refuses, before changing anything, a binding another owner already holds (``PortInUse``
        naming that owner). ``extra_rules`` (rules tagged with ``owner``, such as
        ``rules.bridge_masquerade_commands``) go into the same transaction and replace any rules
        the owner had. With ``flush_udp``, conntrack entries of the published UDP ports are
        deleted afterwards, so a client that sent before the rule existed is not stuck on the
        old (un-NATed) entry (Docker #8795).
        """
        cmds = rules.publish_commands(owner, mappings)  # validates before touching anything
        extra = _check_owner_rules(owner, extra_rules)
        if not cmds and not extra:
            return
        udp_ports = sorted({m.host_port for m in mappings if m.proto == "udp" and rules.nat_capable(m)})
        flush = flush_udp and bool(udp_ports)
        if flush:
            self.backend.require_conntrack()  # refuse before changing anything, not after
        with self.backend.lock():
            current = self.backend.read()
            clashes = rules.conflicts(owner, mappings, current)
            if clashes:
                m, other = clashes[0]
                raise PortInUse(f"{m.host_binding()}/{m.proto}", f"{other} (nftables table inet portwright)")
            if extra:
                cmds += rules.remove_owner_rules_commands(owner, current) + extra
            if not current:
                cmds = rules.base_commands() + cmds
            # Tagged rules are not part of the record: an owner with some is never vouched for.
            self._apply(
                cmds,
                (lambda v: verified.without_owner(v, owner))
                if extra
                else (lambda v: verified.with_publication(v, owner, mappings, not current)),
            )
        if flush:
            self.backend.flush_conntrack_ports("udp", udp_ports)

    def unpublish(
        self,
        owner: str,
        known: Sequence[Mapping] | None = None,
        *,
        recorded: Sequence[Mapping] | None = None,
    ) -> None:
        """Remove every element and rule tagged ``owner``; idempotent (a no-op when none is left).

        Elements are deleted by key, so the read and the delete share the table lock: no other
        owner can publish one of those keys in between (see the module docstring).

        ``known``: every mapping ``owner`` published, from a caller that still holds their host
        bindings (reservation sockets, so no other owner can have published those keys) and that
        added no tagged rules. ``recorded``: the mappings the state records for ``owner``, from a
        caller that holds nothing (its supervisor is gone); they count as known only while the
        verified record vouches, at the generation the table is at now, that exactly these
        elements of ``owner``'s are there (then they are ours, and no one else's key). Either way
        they are deleted by key in one transaction with no read: a 10,000-port table costs about
        a second of nft and JSON per read (#11). If that fails (something is already gone, after
        a firewall reload), the tagged read below runs."""
        rules.owner_tag(owner)  # validates before taking the lock
        gone: Change = lambda v: verified.without_owner(v, owner)  # noqa: E731
        with self.backend.lock():
            if not known and recorded:
                v = self._vouched()
                if v is not None and v.pubs.get(owner) == verified.pub_digest(recorded):
                    known = recorded
            fast = rules.delete_elements_commands(known) if known else []
            if fast:
                try:
                    self._apply(fast, gone)
                    return
                except KernelError:
                    pass  # an element is missing: nothing was changed; decide from the table
            current = self.backend.read()
            cmds = rules.unpublish_commands(owner, current) if current else []
            if cmds:
                self._apply(cmds, gone)

    # --- recovery: put back what a firewall reload took ------------------------------------------

    def ensure_network(self, net: Network) -> list[str]:
        """Re-install the base and ``net``'s rules when any part is missing (a firewall reload, a
        deleted table, chain or element). Idempotent: returns what was missing, and changes
        nothing (and writes nothing) when the table is whole."""
        cmds = rules.network_commands(net)  # validates before taking the lock
        with self.backend.lock():
            current = self.backend.read()
            missing = health.missing_base(current) + health.missing_network(net, current)
            if missing:
                self.backend.apply(
                    rules.base_commands() + rules.remove_network_commands(net.name, current, net) + cmds
                )
        return missing

    def ensure_published(
        self, owner: str, mappings: Sequence[Mapping], wanted: Callable[[], bool] = lambda: True
    ) -> list[str]:
        """Re-add ``owner``'s NAT elements (and the base) when any is missing; returns what was
        missing. ``wanted`` is asked under the table lock, so an owner whose teardown has begun
        (and unpublishes under the same lock) is never published again behind its back. A key
        another owner took meanwhile is refused with ``PortInUse``, as publish."""
        cmds = rules.publish_commands(owner, mappings)  # validates before taking the lock
        if not cmds:
            return []
        with self.backend.lock():
            current = self.backend.read()
            missing = health.missing_base(current) + health.missing_publication(owner, mappings, current)
            if missing and not wanted():
                return []
            if missing:
                clashes = rules.conflicts(owner, mappings, current)
                if clashes:
                    m, other = clashes[0]
                    raise PortInUse(
                        f"{m.host_binding()}/{m.proto}", f"{other} (nftables table inet portwright)"
                    )
                base = rules.base_commands() if health.missing_base(current) else []
                self.backend.apply(base + cmds)
        return missing

    def vouched_whole(self, nets: Sequence[Network], digests: dict[str, str]) -> bool:
        """Does the verified record say, for the generation the table is at now, that the base,
        ``nets`` and each owner's publication (by ``verified.row_digest``) are in place? Then
        ``ensure_all`` would find nothing to do, and its caller need not even decode what it
        would ask for."""
        v = self._vouched()
        return v is not None and verified.vouches(v, v.where, nets, digests)

    def ensure_all(
        self,
        nets: Sequence[Network],
        pubs: Sequence[tuple[str, Sequence[Mapping], Callable[[], bool]]],
    ) -> list[tuple[str, list[str]]]:
        """``ensure_network`` for every network and ``ensure_published`` for every (owner,
        mappings, wanted), read once and applied as ONE transaction: a reload takes them all at
        once, and on a loaded host each nft run costs a tenth of a second. Returns (what, missing)
        for each repair: "table", "network NAME" or the owner; an owner whose key another owner
        took meanwhile is left out and reported as taken."""
        net_cmds = {n.name: rules.network_commands(n) for n in nets}  # validates first
        for owner, _, _ in pubs:
            rules.owner_tag(owner)
        plain = [(owner, ms) for owner, ms, _ in pubs]
        where = self.backend.generation() if self.memo is not None else None
        if self.memo is not None and verified.covers(self.memo.load(), where, nets, plain):
            return []  # the common case: nothing was committed since the table was seen whole
        if self._all_whole(nets, pubs, self.backend.read()):
            self._seen_whole(where, nets, plain)
            return []  # one read, no lock held
        # Built only now: 10,000 mappings' commands cost half a second, and a whole table needs none.
        pub_cmds = {owner: rules.publish_commands(owner, ms) for owner, ms, _ in pubs}
        out: list[tuple[str, list[str]]] = []
        with self.backend.lock():
            where = self.backend.generation() if self.memo is not None else None
            current = self.backend.read()
            cmds: list[Cmd] = []
            skipped: set[str] = set()
            base_gone = health.missing_base(current)
            if base_gone:
                out.append(("table", base_gone))
            for n in nets:
                gone = health.missing_network(n, current)
                if gone:
                    cmds += rules.remove_network_commands(n.name, current, n) + net_cmds[n.name]
                    out.append((f"network {n.name}", gone))
            for owner, ms, wanted in pubs:
                gone = health.missing_publication(owner, ms, current)
                if not gone or not pub_cmds[owner]:
                    continue
                if not wanted():
                    skipped.add(owner)
                    continue
                clashes = rules.conflicts(owner, ms, current)
                if clashes:
                    m, other = clashes[0]
                    out.append((owner, [f"{m.host_binding()}/{m.proto} is taken by {other}"]))
                    skipped.add(owner)
                    continue
                cmds += pub_cmds[owner]
                out.append((owner, gone))
            if base_gone or cmds:
                commits = self.backend.apply((rules.base_commands() if base_gone else []) + cmds)
                after = self.backend.generation() if where is not None else None
                if where is not None and after is not None and verified.advanced(where, commits, after):
                    self._seen_whole(after, nets, [p for p in plain if p[0] not in skipped])
        return out

    def _seen_whole(
        self,
        where: verified.Where | None,
        nets: Sequence[Network],
        pubs: Sequence[tuple[str, Sequence[Mapping]]],
    ) -> None:
        """Record that the table held the base, ``nets`` and ``pubs`` at ``where``, if the
        namespace is still there now (so the read that found them was of that generation).
        What an earlier record at the same generation vouched for is kept."""
        if self.memo is None or where is None or self.backend.generation() != where:
            return
        new = verified.whole(where, nets, pubs)
        old = self.memo.load()
        if old is not None and old.where == where:
            new = verified.Verified(where, True, {**old.nets, **new.nets}, {**old.pubs, **new.pubs}, old.host)
        self.memo.save(new)

    @staticmethod
    def _all_whole(
        nets: Sequence[Network],
        pubs: Sequence[tuple[str, Sequence[Mapping], Callable[[], bool]]],
        current: dict[str, Any],
    ) -> bool:
        """Does ``current`` hold the base, every network and every publication? Read without the
        lock: a yes writes nothing, so there is nothing to race; a no is decided again under it."""
        return (
            not health.missing_base(current)
            and not any(health.missing_network(n, current) for n in nets)
            and not any(health.missing_publication(o, ms, current) for o, ms, _ in pubs)
        )

    # --- conntrack, Docker ----------------------------------------------------------------------

    def flush_conntrack_ports(self, proto: str, ports: Sequence[int]) -> None:
        """Delete conntrack entries whose original destination port is one of ``ports``."""
        self.backend.flush_conntrack_ports(proto, list(ports))

    def flush_conntrack_addrs(self, addrs: Sequence[str]) -> None:
        """Delete conntrack entries to or from these sandbox addresses (teardown)."""
        self.backend.flush_conntrack_addrs(list(addrs))

    def sync_docker_user(self, bridges: Sequence[str]) -> None:
        """Make dockerd's DOCKER-USER chain accept exactly ``bridges`` (none: remove ours).
        Every command asks, and each look is several iptables and nft runs: when the verified
        record says these exact bridges were found in place and nothing was committed since,
        it is skipped (only where iptables writes nftables: ``host_rules_in_nftables``)."""
        want = tuple(sorted(set(bridges)))
        v = self._vouched()
        if v is not None and v.host == want:
            return
        where = v.where if v is not None else (self.backend.generation() if self.memo is not None else None)
        self.backend.docker_user_sync(list(want))
        if self.memo is None or where is None or not self.backend.host_rules_in_nftables():
            return
        if self.backend.generation() == where:  # it found everything in place and wrote nothing
            self.memo.save(dataclasses.replace(v or verified.Verified(where), host=want))

    # --- anti-spoofing: table bridge portwright (firewall.antispoof) ------------------------------

    def _bridge_table(self) -> dict[str, Any]:
        return self.backend.read_table(antispoof.FAMILY, antispoof.TABLE)

    def ensure_antispoof(self, sb: Sandbox, wanted: Callable[[], bool] = lambda: True) -> list[str]:
        """Make the protection of ``sb``'s bridge port whole: the table, its chains and rules,
        and the port's elements. Idempotent; returns what was missing (empty: nothing was
        written). Adds a sandbox's port, and puts it back after a flush. A sandbox without a
        bridge port has nothing to protect. ``wanted`` is asked under the table lock, as in
        ``ensure_published``: a sandbox whose teardown began is not protected again."""
        port = antispoof.port_for(sb)
        if port is None:
            return []
        with self.backend.lock():
            current = self._bridge_table()
            gone = antispoof.missing(port, current)
            if gone and not wanted():
                return []
            if gone:
                base = antispoof.base_commands() if any(not g.startswith("port") for g in gone) else []
                self._apply(base + antispoof.add_commands(port), _unchanged)
        return gone

    def ensure_antispoof_all(
        self, sbs: Sequence[tuple[Sandbox, Callable[[], bool]]]
    ) -> list[tuple[Sandbox, list[str]]]:
        """``ensure_antispoof`` for many sandboxes at once (restore): when a read outside the lock
        finds everything in place, that one read is all it costs; else one read under the lock
        and one transaction. k sandboxes cost the same number of nft runs and lock takes as one
        (before, each took the host-wide lock and read the whole bridge table). Returns
        (sandbox, what was missing) for each one repaired."""
        ports = [(sb, p, wanted) for sb, wanted in sbs if (p := antispoof.port_for(sb)) is not None]
        just_ports = [p for _, p, _ in ports]
        if not ports or not any(antispoof.missing_each(just_ports, self._bridge_table())):
            return []  # whole: nothing to decide, so no lock is held for it
        out: list[tuple[Sandbox, list[str]]] = []
        with self.backend.lock():
            current = self._bridge_table()
            cmds: list[Cmd] = []
            base = False
            each = antispoof.missing_each(just_ports, current)
            for (sb, port, wanted), gone in zip(ports, each, strict=True):
                if not gone or not wanted():
                    continue
                base = base or any(not g.startswith("port") for g in gone)
                cmds += antispoof.add_commands(port)
                out.append((sb, gone))
            if cmds:
                self._apply((antispoof.base_commands() if base else []) + cmds, _unchanged)
        return out

    def remove_antispoof(self, owner: str) -> None:
        """Remove every anti-spoofing element tagged ``owner``; a no-op when none is left."""
        rules.owner_tag(owner)  # validates before taking the lock
        with self.backend.lock():
            cmds = antispoof.remove_commands(owner, self._bridge_table())
            if cmds:
                self._apply(cmds, _unchanged)

    def antispoof_owners(self) -> set[str]:
        """Owner tags with elements in the anti-spoofing table (reconcile removes dead ones)."""
        return antispoof.owners(self._bridge_table())

    def antispoof_ports(self) -> dict[str, str]:
        """Protected bridge port -> owner tag (``audit``)."""
        return antispoof.ports(self._bridge_table())
