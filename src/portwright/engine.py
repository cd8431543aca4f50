"""The engine: owns networks and the whole sandbox lifecycle — create, publish, start, stop,
teardown and reconcile.

It is handed its collaborators rather than importing them (netavark's shape): the state database,
a ``Firewall`` (nftables, or the in-memory fake in tests), a ``Host`` (the kernel's namespaces,
links and cgroups, or a fake), and it builds publishers by name through ``publish.registry``. So the
engine runs under unit tests without root. The supervisor (one small process per sandbox) only
holds what must stay alive and calls ``create``/``started``/``finish``. Setup records intent in
state before each kernel object and registers its undo on an ExitStack; teardown never stops at
the first error: it goes on and reports every failure at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import secrets
import signal
import socket
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import ipam
from .dns.records import Entry, alias_clash
from .dns.service import Dns, LiveDns, NoDns
from .errors import BadInput, Conflict, KernelError, NotFound, PortwrightError
from .firewall import verified
from .firewall.memofile import MEMO_NAME
from .kernel.host import Host, LinuxHost
from .kernel.logcollect import records_path
from .kernel.spawn import stderr_path
from .model import ANY4, ANY6, Mapping, Network, Sandbox
from .owners import sandbox_owner
from .publish import registry
from .publish.base import Bound, Publisher, Target, allocate
from .resume import last_ports, preferred
from .spec import DEFAULT_NETWORK, SandboxSpec, check_name
from .state import (
    SandboxRecord,
    State,
    being_reaped,
    control_socket_path,
    grace_path,
    pid_alive,
    proc_start_time,
    write_grace,
)

if TYPE_CHECKING:
    from .firewall.backend import Firewall

RESERVED_NETWORK_NAMES = ("host", "none", "bridge", "default")
NETNS_PREFIX = "pw-"
VETH_PREFIX = "pwv"  # + 11 hex of the id: 14 characters, within IFNAMSIZ
STOP_POLL_SECONDS = 0.02


def _explicit_subnet(
    text: str, version: type[ipam.AnyNet], flag: str, used: list[ipam.AnyNet]
) -> ipam.AnyNet:
    """A user-given subnet, refused when it overlaps a network or route already on the host."""
    net = ipam.parse_subnet(text, version, flag)
    clash = ipam.overlapping(net, used)
    if clash is not None:
        pool = ipam.POOL4 if net.version == 4 else ipam.POOL6
        raise Conflict(
            f"{flag} {net} overlaps {clash}, already in use on this host; "
            f"choose a free range (e.g. within {pool})"
        )
    return net


RESUME = "resume"  # SandboxSpec.extra key: {"id", "ip4", "ip6"} of the exited sandbox `start` brings back


def _str_or_none(a: object) -> str | None:
    return None if a is None else str(a)


def _preferred(want: str | None, net: ipam.AnyNet, used: list[Any]) -> Any:
    """``want`` if it is a free host address of ``net``, else the next free one."""
    if want:
        a = ipaddress.ip_address(want)
        if a in net and a not in used and a != ipam.gateway(net) and a != net.network_address:
            return a
    return ipam.next_address(net, used)


def _unlink_quietly(path: str | None) -> None:
    """Remove a detached sandbox's logs: its records, or stdout at ``path`` and stderr beside it."""
    for p in (path, stderr_path(path), records_path(path)) if path else ():
        try:
            os.unlink(p)
        except OSError:
            pass


def _close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def new_id() -> str:
    return secrets.token_hex(6)


@dataclass(slots=True)
class Live:
    """A sandbox being created or running in this process: what teardown must undo."""

    sandbox: Sandbox
    spec: SandboxSpec
    publisher: Publisher | None = None
    cgroup: str | None = None
    log_path: str | None = None  # CMD's output, for a detached sandbox
    sockets: list[socket.socket] = field(default_factory=list)  # every reservation, owned by the publisher


class Engine:
    def __init__(
        self,
        state: State | None = None,
        firewall: Firewall | None = None,
        host: Host | None = None,
        dns: Dns | None = None,
    ) -> None:
        self.state = state or State()
        self._fw = firewall
        self.host: Host = host or LinuxHost()
        # Name resolution (dns/): the real resolver with the real kernel, none with a fake host.
        self.dns: Dns = dns or (LiveDns(self.state.dir) if isinstance(self.host, LinuxHost) else NoDns())

    @property
    def fw(self) -> Firewall:
        if self._fw is None:
            from .firewall.backend import default_firewall

            self._fw = default_firewall()
        # The state directory keeps what the table was last seen to hold (firewall.verified), so
        # every command's check costs no read of a table that did not change.
        self._fw.remember_in(os.path.join(self.state.dir, MEMO_NAME))
        return self._fw

    # ------------------------------------------------------------------ networks
    def create_network(
        self,
        name: str,
        subnet: str | None = None,
        ipv6: bool = False,
        subnet6: str | None = None,
        internal: bool = False,
    ) -> Network:
        self.host.require_root("creating a network")
        check_name(name)
        if name in RESERVED_NETWORK_NAMES:
            raise BadInput(f"network name {name!r} is reserved; choose another name")
        if self.state.find_network(name):
            raise Conflict(f"network {name!r} already exists; remove it with 'portwright network rm {name}'")
        ipv6 = ipv6 or bool(subnet6)
        if ipv6 and not self.host.ipv6_enabled():
            raise BadInput("--ipv6: IPv6 is disabled on this host (net.ipv6.conf.all.disable_ipv6=1)")
        with self._network_lock(), ExitStack() as stack:
            with self.state.tx():
                net = self._carve_network(name, subnet, subnet6 if ipv6 else None, ipv6, internal)
                self.state.add_network(net)
            stack.callback(self._forget_network, name)
            addrs = [f"{net.gateway4}/{net.subnet4.prefixlen}"]
            if net.subnet6 is not None and net.gateway6 is not None:
                addrs.append(f"{net.gateway6}/{net.subnet6.prefixlen}")
            self.host.create_bridge(net.bridge, addrs, internal=internal, ipv6=net.subnet6 is not None)
            stack.callback(self.host.delete_link, net.bridge)
            self.fw.ensure_base()
            self.fw.add_network(net)
            stack.callback(self.fw.remove_network, name)
            self.sync_docker_user()
            stack.pop_all()
        return net

    def _carve_network(
        self, name: str, subnet: str | None, subnet6: str | None, ipv6: bool, internal: bool
    ) -> Network:
        """Pick the subnets (inside the caller's transaction): given ones must be free."""
        used: list[ipam.AnyNet] = [ipaddress.ip_network(p, strict=False) for p in self.host.used_prefixes()]
        mine = self.state.networks()
        used += [n.subnet4 for n in mine] + [n.subnet6 for n in mine if n.subnet6]
        net4 = (
            _explicit_subnet(subnet, ipaddress.IPv4Network, "--subnet", used)
            if subnet
            else ipam.carve4(u for u in used if isinstance(u, ipaddress.IPv4Network))
        )
        assert isinstance(net4, ipaddress.IPv4Network)
        net6: ipaddress.IPv6Network | None = None
        if ipv6:
            n6 = (
                _explicit_subnet(subnet6, ipaddress.IPv6Network, "--subnet6", used)
                if subnet6
                else ipam.carve6(u for u in used if isinstance(u, ipaddress.IPv6Network))
            )
            assert isinstance(n6, ipaddress.IPv6Network)
            net6 = n6
        return Network(
            name=name,
            bridge="pw-" + secrets.token_hex(4),
            subnet4=net4,
            gateway4=ipam.gateway(net4),
            subnet6=net6,
            gateway6=ipam.gateway(net6) if net6 else None,
            internal=internal,
        )

    def _forget_network(self, name: str) -> None:
        with self.state.tx():
            self.state.remove_network(name)

    def ensure_network(self, name: str) -> Network:
        if self.state.find_network(name) is not None:
            # The kernel is the truth: a firewall reload ('nft flush ruleset') or someone else's
            # 'nft delete table' may have taken any part of the network's rules; put them back.
            with self._network_lock():
                # Looked up again under the lock: a 'network rm' that held it meanwhile has
                # removed the network, and putting its rules back would leave them for good.
                net = self.state.find_network(name)
                if net is not None:
                    self.fw.ensure_network(net)
                    return net
        if name != DEFAULT_NETWORK:
            raise NotFound(
                f"network {name!r} not found; create it with 'portwright network create {name}' "
                "or list them with 'portwright network ls'"
            )
        try:
            return self.create_network(DEFAULT_NETWORK, ipv6=self.host.ipv6_enabled())
        except Conflict:
            # Another concurrent run created it first.
            return self.state.network(DEFAULT_NETWORK)

    def remove_network(self, name: str) -> None:
        self.host.require_root("removing a network")
        with self._network_lock():
            # The in-use check and the removal are one transaction: a 'run' that records its
            # sandbox first makes this refuse; one that comes after finds the network gone.
            with self.state.tx():
                net = self.state.network(name)
                users = [
                    r.name
                    for r in self.state.sandboxes()
                    if r.sandbox.network == name and r.status != "exited"
                ]
                if users:
                    raise Conflict(
                        f"network {name!r} is in use by sandbox(es) {', '.join(users)}; "
                        "remove them first ('portwright rm -f NAME')"
                    )
                for r in self.state.sandboxes():
                    if r.sandbox.network == name:
                        self.state.remove_sandbox(r.id)
                self.state.remove_network(name)
            errors = _collect(
                ("nft", lambda: self.fw.remove_network(name, net)),
                ("bridge", lambda: self.host.delete_link(net.bridge)),
            )
        self.sync_docker_user()
        self.dns.changed()  # its listeners close
        if errors:
            raise KernelError(f"removing network {name}", "; ".join(errors))

    @contextlib.contextmanager
    def _network_lock(self) -> Iterator[None]:
        """Creating and removing networks touch the kernel by network name (nft chains): one at a
        time, so a 'network rm' still cleaning up cannot remove a same-named network just made."""
        with open(os.path.join(self.state.dir, "network.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def sync_docker_user(self) -> None:
        """Keep Docker's DOCKER-USER hook accepting our bridges (Docker's FORWARD policy is DROP).

        Serialised by a lock file: supervisors and commands may sync at the same moment, and the
        check-then-insert inside must not run twice at once."""
        lock_path = os.path.join(self.state.dir, "docker-user.lock")
        try:
            with open(lock_path, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self.fw.sync_docker_user([n.bridge for n in self.state.networks()])
        except (PortwrightError, OSError):
            pass

    # ------------------------------------------------------------------ sandbox setup
    def create(
        self, spec: SandboxSpec, stack: ExitStack, supervisor_pid: int | None = None, serve: bool = True
    ) -> Live:
        """Record, build and publish a sandbox; every step's undo goes on ``stack`` (the caller
        pops it once CMD runs). Returns what the supervisor keeps alive. ``serve`` False leaves
        the userland relays (``Live.publisher.relays()``) to the process that will hold them."""
        self.host.require_root("portwright run")
        resume = spec.extra.get(RESUME)
        sid = str(resume["id"]) if resume else new_id()
        name = spec.name or f"pw_{sid[:8]}"
        if resume:
            self._take_back(sid, name, stack)
        elif self.state.name_taken(name):
            raise Conflict(
                f"a sandbox named {name!r} already exists; remove it with 'portwright rm -f {name}' "
                "or choose another --name"
            )
        net = self.ensure_network(spec.network) if spec.bridged else None
        sb = self._record(spec, sid, name, net, supervisor_pid)
        stack.callback(self._forget, sid)
        self._build(sb, net, stack)
        self._protect(spec, sb, stack)
        if net is not None:
            stack.callback(self.dns.detach, sb)
            self.dns.attach(sb, net)  # resolv.conf; the resolver starts or reloads meanwhile
            stack.callback(self.dns.settle)  # a failure below still waits for it, then undoes
        live = Live(sandbox=sb, spec=spec, log_path=self._log_path(spec, sid))
        mode = registry.mode_for(spec)
        if mode is not None:
            live.publisher = registry.create(mode, registry.PublishContext(spec, sandbox_owner(sid), self.fw))
            bound = self._allocate(spec, sb, live.publisher)
            live.sockets = [s for _, s in bound if s is not None]
            stack.callback(_close_all, live.sockets)
            stack.callback(live.publisher.unpublish)
            live.publisher.publish(bound)
            # A publisher may give reservations back (host-remap: CMD's own bind takes the port).
            live.sockets[:] = [s for s in live.sockets if s.fileno() != -1]
            if serve:
                live.publisher.serve()
        live.cgroup = self.host.cgroup_create(sid)
        stack.callback(self.host.cgroup_kill, live.cgroup)
        self.dns.settle()  # CMD, which starts next, may ask for names at once
        return live

    def _record(
        self, spec: SandboxSpec, sid: str, name: str, net: Network | None, supervisor_pid: int | None
    ) -> Sandbox:
        """Take addresses and record the sandbox, in one transaction, before anything exists."""
        with self.state.tx():
            ip4: ipaddress.IPv4Address | None = None
            ip6: ipaddress.IPv6Address | None = None
            if net is not None:
                if self.state.find_network(net.name) is None:
                    # 'network rm' won the race: its transaction removed the network after we
                    # looked it up. Checked in the same transaction that records the sandbox.
                    raise NotFound(
                        f"network {net.name!r} was removed while this sandbox was starting; "
                        f"create it again with 'portwright network create {net.name}'"
                    )
                others = [
                    r.sandbox for r in self.state.sandboxes(ports=False) if r.sandbox.network == net.name
                ]
                self._refuse_name_clash(spec, name, net.name)
                want = spec.extra.get(RESUME) or {}  # `start`: the addresses it had, if still free
                ip4 = _preferred(want.get("ip4"), net.subnet4, [s.ip4 for s in others if s.ip4])
                if net.subnet6 is not None:
                    ip6 = _preferred(want.get("ip6"), net.subnet6, [s.ip6 for s in others if s.ip6])
            ns_name = None if spec.network == "host" else NETNS_PREFIX + name
            sb = Sandbox(
                id=sid,
                name=name,
                network=spec.network,
                netns=self.host.netns_path(ns_name) if ns_name else None,
                veth=None if net is None else VETH_PREFIX + sid[:11],
                ip4=ip4,
                ip6=ip6,
                mac=ipam.mac_for(ip4, sid) if net else None,
                publish_mode=registry.mode_for(spec) or "none",
            )
            stored = {k: v for k, v in spec.to_json().items() if k != RESUME}
            self.state.insert_sandbox(sb, list(spec.cmd), spec=stored, log_path=self._log_path(spec, sid))
            resumed = spec.extra.get(RESUME) or {}  # `start` keeps Created (and the last FinishedAt)
            self.state.update_sandbox(
                sid, **{k: resumed[k] for k in ("created", "finished") if resumed.get(k) is not None}
            )
            if supervisor_pid is not None:
                self.state.update_sandbox(
                    sid, supervisor_pid=supervisor_pid, supervisor_start=proc_start_time(supervisor_pid)
                )
        return sb

    def _take_back(self, sid: str, name: str, stack: ExitStack) -> None:
        """``portwright start``: the exited sandbox's record makes way for the one being created
        under the same ID and name (its logs stay and grow); put back if the start fails."""
        with self.state.tx():
            old = self.state.find_sandbox(sid)
            if old is None or old.name != name or old.status != "exited":
                raise Conflict(f"sandbox {name!r} is no longer stopped (started or removed meanwhile)")
            self.state.remove_sandbox(sid)
        stack.callback(self._put_back, old)

    def _put_back(self, old: SandboxRecord) -> None:
        with self.state.tx():
            self.state.insert_sandbox(
                old.sandbox, list(old.cmd), spec=old.spec.to_json(), status="exited", log_path=old.log_path
            )
            self.state.update_sandbox(
                old.id,
                exit_code=old.exit_code,
                finished=old.finished,
                last_addrs=old.last_addrs,
                created=old.created,
                started=old.started,
            )

    def _refuse_name_clash(self, spec: SandboxSpec, name: str, network: str) -> None:
        """An alias may not shadow another live sandbox's name on its network, nor a name an alias."""
        live = [
            Entry(r.sandbox.network, r.name, r.spec.aliases)
            for r in self.state.sandboxes(ports=False)
            if r.status != "exited" and r.sandbox.network == network
        ]
        why = alias_clash(name, spec.aliases, network, live)
        if why is not None:
            raise Conflict(f"{why}; choose another alias or name")

    def _log_path(self, spec: SandboxSpec, sid: str) -> str | None:
        return os.path.join(self.state.dir, "logs", f"{sid}.log") if spec.detach else None

    def _build(self, sb: Sandbox, net: Network | None, stack: ExitStack) -> None:
        """Namespace, veth, addresses, routes."""
        if sb.netns is None:
            return
        ns_name = os.path.basename(sb.netns)
        self.host.netns_add(ns_name)  # fails if pw-NAME exists: never delete what we did not make
        stack.callback(self.host.netns_delete, ns_name)
        if net is None or sb.veth is None:
            self.host.configure_sandbox(ns_name, None, None, None, None)
            return
        stack.callback(self.host.delete_link, sb.veth)
        self.host.create_veth(sb.veth, ns_name, net.bridge, sb.mac)
        self.host.configure_sandbox(
            ns_name,
            f"{sb.ip4}/{net.subnet4.prefixlen}",
            str(net.gateway4),
            f"{sb.ip6}/{net.subnet6.prefixlen}" if sb.ip6 and net.subnet6 else None,
            str(net.gateway6) if sb.ip6 else None,
        )

    def _protect(self, spec: SandboxSpec, sb: Sandbox, stack: ExitStack) -> None:
        """Anti-spoofing on its bridge port (``firewall.antispoof``), unless ``--allow-spoof``."""
        if sb.veth is None or spec.privileges.allow_spoof:
            return
        stack.callback(self.fw.remove_antispoof, sandbox_owner(sb.id))
        self.fw.ensure_antispoof(sb)

    def _allocate(self, spec: SandboxSpec, sb: Sandbox, publisher: Publisher) -> Bound:
        """Host ports for every request, under the state lock (a real bind is the kernel's check)."""
        specs = spec.port_specs()
        if not specs:
            return []
        with self.state.tx():
            known = [
                (f"sandbox {r.name!r} ({r.id})", m)
                for r in self.state.sandboxes()
                for m in r.sandbox.mappings
            ]
            bound = allocate(
                specs,
                # Host networking (host-remap): CMD binds the host's own addresses.
                Target(sb.ip4, sb.ip6) if spec.bridged else Target(ANY4, ANY6),
                known,
                ipv6_host=self.host.ipv6_enabled(),
                dual_stack=publisher.dual_stack,
                prefer=preferred((spec.extra.get(RESUME) or {}).get("ports")),  # `start`: same ports
            )
            self.state.set_ports(sb.id, [m for m, _ in bound])
        return bound

    def _forget(self, sid: str) -> None:
        with self.state.tx():
            self.state.remove_sandbox(sid)

    def started(self, live: Live, cmd_pid: int | None) -> None:
        """CMD runs. Only a sandbox still being created becomes running: one whose CMD already
        exited and was torn down (a very short CMD) stays as teardown left it."""
        with self.state.tx():
            rec = self.state.find_sandbox(live.sandbox.id)
            if rec is not None and rec.status == "creating":
                self.state.update_sandbox(
                    live.sandbox.id,
                    status="running",
                    cmd_pid=cmd_pid,
                    cmd_start=proc_start_time(cmd_pid) if cmd_pid else None,
                    started=time.time(),
                )

    def reap(self, supervisor_pid: int, exit_code: int | None) -> str | None:
        """A supervisor that cannot tear down itself (the tiny one, tini) has exited with CMD's
        code: tear its sandbox down now. Returns the sandbox's name, None if it had none."""
        lean = next(
            (
                r
                for r in self.state.sandboxes(ports=False)
                if r.supervisor_pid == supervisor_pid and r.status != "exited"
            ),
            None,
        )
        if lean is None:
            return None
        problems = self._tear_down_dead(lean.id, supervisor_pid, exit_code)
        for problem in problems or ():
            print(f"portwright: teardown of {lean.name}: {problem}", file=sys.stderr)
        return lean.name if problems is not None else None

    def _tear_down_dead(
        self, sid: str, supervisor_pid: int | None, exit_code: int | None
    ) -> list[str] | None:
        """Tear down a sandbox whose supervisor is gone, and mark it exited: once, by whoever comes
        first of the fork server's reaper and any command's reconcile. Returns the teardown's
        problems, or None when there was nothing to do (done meanwhile, or started again).

        Both may find the same dead supervisor (the reaper has collected it, so it is no longer a
        zombie that ``being_reaped`` recognises). Unserialised, the slower one went on tearing
        down after the faster one had marked the sandbox exited and ``restart`` had started it
        again under the same ID: it deleted the new netns and marked the new run exited, leaving
        its CMD running unrecorded. Under the lock, the second one finds it exited, or run by
        another supervisor, and leaves it."""
        with self._reap_lock(sid):
            rec = self.state.find_sandbox(sid)  # with its mappings: teardown may need them
            if (
                rec is None
                or rec.status == "exited"
                or rec.supervisor_pid != supervisor_pid
                or pid_alive(rec.supervisor_pid, rec.supervisor_start)
            ):
                return None
            # A Python supervisor killed with -9 leaves CMD running: where there is no cgroup to
            # kill (inside 'ip netns exec', whose /sys has no cgroup2), only its process group goes.
            _kill_cmd_group(rec)
            problems = self.teardown(rec)
            self.mark_exited(rec, exit_code)
            return problems

    @contextlib.contextmanager
    def _reap_lock(self, sid: str) -> Iterator[None]:
        """One sandbox's teardown-after-death at a time: a POSIX lock on one byte of
        ``reap.lock`` chosen by the ID (two IDs sharing a byte only wait for each other). No file
        per sandbox is left behind, and the kernel drops the lock of a process that dies."""
        with open(os.path.join(self.state.dir, "reap.lock"), "a") as lock:
            fcntl.lockf(lock, fcntl.LOCK_EX, 1, zlib.crc32(sid.encode()) & 0x7FFFFFFF, os.SEEK_SET)
            yield

    def finish(self, live: Live, exit_code: int | None) -> list[str]:
        """CMD is gone: undo the publication and everything else; collect every error."""
        errors: list[str] = []
        firewall_done = False
        self.mark_removing(live.sandbox.id)
        if live.publisher is not None:
            in_kernel = live.publisher.in_kernel
            more = live.publisher.unpublish()
            firewall_done = in_kernel and not more
            errors += more
        rec = self.state.find_sandbox(live.sandbox.id)
        if rec is not None:
            errors += self.teardown(rec, firewall=not firewall_done)
            self.mark_exited(rec, exit_code)
        return errors

    # ------------------------------------------------------------------ teardown
    def teardown(
        self, rec: SandboxRecord, firewall: bool = True, known: list[Mapping] | None = None
    ) -> list[str]:
        """Remove every kernel object a sandbox may have; errors are collected, not raised.
        ``firewall`` False: its publisher already removed its firewall elements. ``known``: its
        NAT mappings, from a caller that still holds their host bindings (``Firewall.unpublish``
        then deletes them by key, with no read of a table that may hold 20,000 elements)."""
        sb = rec.sandbox
        steps: list[tuple[str, object]] = []
        if firewall:
            # nat and ebpf add no tagged rules: their recorded elements may go by key, when the
            # verified record vouches for them (ops.Firewall.unpublish).
            recorded = sb.mappings if sb.publish_mode in ("nat", "ebpf") else None
            steps.append(
                ("nft", lambda: self.fw.unpublish(sandbox_owner(sb.id), known=known, recorded=recorded))
            )
        if sb.veth:
            steps.append(("anti-spoofing", lambda: self.fw.remove_antispoof(sandbox_owner(sb.id))))
            steps.append((f"veth {sb.veth}", lambda: self.host.delete_link(sb.veth or "")))
        if sb.netns:
            steps.append(
                (f"netns {sb.netns}", lambda: self.host.netns_delete(os.path.basename(sb.netns or "")))
            )
        self.dns.detach(sb)
        errors = _collect(*steps)
        errors += self.host.cgroup_kill(self.host.cgroup_path(sb.id))
        # A supervisor killed with -9 leaves its control socket and stop-grace file (issue 13).
        for leftover in (control_socket_path(self.state.dir, sb.id), grace_path(self.state.dir, sb.id)):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        # What a mechanism keeps outside the firewall (host-remap's BPF links pinned in bpffs).
        errors += registry.cleanup(sb.publish_mode, sandbox_owner(sb.id))
        addrs = [str(a) for a in (sb.ip4, sb.ip6) if a is not None]
        if addrs:
            # As Docker does when an endpoint goes: a UDP flow that still arrives for this
            # sandbox's published port must not follow the address to the next sandbox given it.
            errors += _collect(("conntrack", lambda: self.fw.flush_conntrack_addrs(addrs)))
        return errors

    def mark_exited(self, rec: SandboxRecord, exit_code: int | None) -> None:
        spec = rec.spec
        keep = spec.detach and not spec.remove
        with self.state.tx():
            if keep:
                self.state.set_ports(rec.id, [])
                # None: not known here; an exit code the fork server recorded stays.
                known: dict[str, object] = {} if exit_code is None else {"exit_code": exit_code}
                if rec.status != "exited":
                    known["finished"] = time.time()
                if rec.sandbox.ip4 or rec.sandbox.ip6 or rec.sandbox.mappings:  # what `start` asks for again
                    known["last_addrs"] = json.dumps(
                        {
                            "ip4": _str_or_none(rec.sandbox.ip4),
                            "ip6": _str_or_none(rec.sandbox.ip6),
                            "ports": last_ports(rec.sandbox.mappings),
                        }
                    )
                self.state.update_sandbox(
                    rec.id, status="exited", ip4=None, ip6=None, supervisor_pid=None, cmd_pid=None, **known
                )
            else:
                self.state.remove_sandbox(rec.id)
        if not keep:
            _unlink_quietly(rec.log_path)
        self.dns.changed()  # its names go now

    def reconcile(self, restore: bool = True) -> list[str]:
        """Clear up after supervisors that died (kill -9, crash, reboot of the state dir's owner).
        ``restore`` False: skip putting back the firewall (the command's first reconcile, in the
        CLI, already did; a second full check costs a read of the whole table, 20,000 elements
        at 10,000 ports)."""
        self._rebuild_if_needed()
        cleaned = []
        for lean in self.state.sandboxes(ports=False):
            if lean.status == "exited" or pid_alive(lean.supervisor_pid, lean.supervisor_start):
                continue
            if being_reaped(lean.supervisor_pid):
                continue  # the fork server has CMD's exit code and tears down itself
            if lean.status == "creating" and time.time() - lean.created < 2 and lean.supervisor_pid is None:
                continue  # just being recorded by a live process that has not set its pid yet
            # Read again there, with its mappings, under the lock: gone or started again
            # meanwhile, it is left alone.
            if self._tear_down_dead(lean.id, lean.supervisor_pid, None) is not None:
                cleaned.append(lean.name)
        if restore and self.state.networks():
            # A firewall reload may have taken our table: every command puts it back (issue 13).
            # restore also makes sure dockerd's DOCKER-USER hook accepts our bridges (dockerd may
            # have started since our networks were made: its FORWARD policy is DROP).
            for line in self.restore():
                print(f"portwright: {line}", file=sys.stderr)
        # ebpf's shared maps: entries of sandboxes that are gone go, detached programs come back.
        live = {sandbox_owner(r.id) for r in self.state.sandboxes(ports=False) if r.status != "exited"}
        for line in registry.sweep(live):
            print(f"portwright: {line}", file=sys.stderr)
        # A resolver killed (-9) is started again while sandboxes need it (dns/service.py).
        self.dns.reconcile(
            any(r.status != "exited" and r.spec.bridged for r in self.state.sandboxes(ports=False))
        )
        return cleaned

    def _rebuild_if_needed(self) -> None:
        """A damaged state file was set aside (``State``): record again what the kernel holds,
        and say so in one line (issue 13)."""
        pending = self.state.rebuild_pending()
        if pending is None:
            return
        from .rebuild import rebuild, warning

        with self._network_lock():
            if self.state.rebuild_pending() is None:
                return  # another command did it meanwhile
            nets, names = rebuild(self.state, self.fw)
            self.state.rebuild_done()
        print(warning(*pending, nets, names), file=sys.stderr)

    def restore(self, sids: set[str] | None = None) -> list[str]:
        """Put back what a firewall reload took: every network's rules and the NAT elements of
        running sandboxes (only those in ``sids`` when given). Idempotent and quiet when the
        table is whole. Returns one line per repair or failure; raises nothing."""
        lines: list[str] = []
        running = [
            r
            for r in self.state.sandboxes(ports=False)
            if r.status == "running" and (sids is None or r.id in sids)
        ]
        try:
            with self._network_lock():  # 'network rm' holds it: no network comes back as it goes
                lines += self._restore_nat([r for r in running if r.sandbox.publish_mode in ("nat", "ebpf")])
        except PortwrightError as e:
            lines.append(f"firewall: not restored: {e}")
        lines += self._restore_antispoof(running)
        if self.state.networks():
            # The same reload may have taken the host firewall's accepts for our bridges (ufw
            # reload, firewall-cmd --reload, iptables-restore): put them back too (issue 16).
            self.sync_docker_user()
        return lines

    def _restore_nat(self, recs: list[SandboxRecord]) -> list[str]:
        """The NAT half of ``restore``, for these running nat/ebpf sandboxes (read without their
        mappings). When the verified record vouches for every one of them by its stored rows,
        nothing is decoded and the table is not read (#11): the usual case, every command."""
        nets = self.state.networks()
        rows = {r.id: self.state.port_rows(r.id) for r in recs}
        digests = {sandbox_owner(sid): verified.row_digest(rs) for sid, rs in rows.items() if rs}
        if self.fw.vouched_whole(nets, digests):
            return []
        nat = [
            full
            for r in recs
            if rows[r.id] and (full := self.state.find_sandbox(r.id)) is not None and full.sandbox.mappings
        ]
        pubs = [
            (sandbox_owner(r.id), r.sandbox.mappings, functools.partial(self._serving, r.id)) for r in nat
        ]
        repaired = self.fw.ensure_all(nets, pubs)
        names = {sandbox_owner(r.id): f"sandbox {r.name}" for r in nat}
        return [f"{names.get(what, what)}: restored {', '.join(gone[:4])}" for what, gone in repaired]

    def _restore_antispoof(self, recs: list[SandboxRecord]) -> list[str]:
        """Put back running sandboxes' anti-spoofing elements (issue 19), as their NAT ones: one
        read and at most one transaction for all of them, so a restore does not grow with k."""
        protect = [
            (r.sandbox, functools.partial(self._serving, r.id))
            for r in recs
            if r.sandbox.veth is not None and not r.spec.privileges.allow_spoof
        ]
        try:
            repaired = self.fw.ensure_antispoof_all(protect)
        except PortwrightError as e:
            return [f"anti-spoofing not restored: {e}"]
        return [f"sandbox {sb.name}: restored anti-spoofing ({', '.join(gone[:3])})" for sb, gone in repaired]

    def _serving(self, sid: str) -> bool:
        """Is sandbox ``sid`` running, with a live supervisor, and not yet tearing down?"""
        rec = self.state.find_sandbox(sid)
        return (
            rec is not None
            and rec.status == "running"
            and pid_alive(rec.supervisor_pid, rec.supervisor_start)
        )

    def mark_removing(self, sid: str) -> None:
        """Teardown begins: from now on nothing puts the sandbox's rules back (``restore``
        asks under the table lock, and teardown unpublishes under it after this)."""
        with self.state.tx():
            rec = self.state.find_sandbox(sid)
            if rec is not None and rec.status in ("creating", "running"):
                self.state.update_sandbox(sid, status="removing")

    # ------------------------------------------------------------------ stop / rm
    def signal_stop(self, rec: SandboxRecord, grace: float, kill: bool = False) -> None:
        """Ask a sandbox's supervisor to stop CMD: SIGTERM then SIGKILL after ``grace`` seconds,
        or (``kill``, as ``rm -f``) SIGKILL to every process of CMD's cgroup at once."""
        if not pid_alive(rec.supervisor_pid, rec.supervisor_start):
            return
        assert rec.supervisor_pid is not None
        path = self.host.cgroup_path(rec.id)
        if kill and path is not None and os.path.isdir(path):
            self.host.cgroup_kill(path)  # the supervisor sees CMD exit and tears down
            return
        write_grace(self.state.dir, rec.id, 0 if kill else grace)
        os.kill(rec.supervisor_pid, signal.SIGTERM)

    def wait_stopped(self, rec: SandboxRecord, timeout: float) -> None:
        """Wait for the supervisor to finish; past ``timeout``, kill CMD's whole cgroup (the
        supervisor then tears down as usual), and the supervisor itself if it still lingers."""
        for last_resort in (
            lambda: self.host.cgroup_kill(self.host.cgroup_path(rec.id)),
            lambda: os.kill(rec.supervisor_pid or 0, signal.SIGKILL),
        ):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and pid_alive(rec.supervisor_pid, rec.supervisor_start):
                time.sleep(STOP_POLL_SECONDS)
            if not pid_alive(rec.supervisor_pid, rec.supervisor_start):
                return
            last_resort()
            timeout = 5.0

    def stop(self, name: str, timeout: float = 10.0) -> None:
        rec = self.state.sandbox(name)
        if rec.status == "exited":
            return
        self.signal_stop(rec, timeout)
        self.wait_stopped(rec, timeout + 0.5)
        self.reconcile(restore=False)

    def remove(self, names: list[str], force: bool = False) -> list[tuple[str, PortwrightError | None]]:
        """Remove sandboxes; with ``force``, running ones are killed first, all at once, as
        ``docker rm -f``. Returns (name, error or None) in the order given."""
        out: list[tuple[str, PortwrightError | None]] = []
        recs: list[SandboxRecord] = []
        for n in names:
            try:
                rec = self.state.sandbox(n)
                if rec.status != "exited" and not force:
                    raise Conflict(
                        f"sandbox {rec.name!r} is {rec.status}; stop it first or use 'portwright rm -f'"
                    )
                recs.append(rec)
                out.append((n, None))
            except PortwrightError as e:
                out.append((n, e))
        for rec in recs:
            if rec.status != "exited":
                self.signal_stop(rec, 0, kill=True)
        for rec in recs:
            if rec.status != "exited":
                self.wait_stopped(rec, 10)
        self.reconcile(restore=False)
        for rec in recs:
            rec2 = self.state.find_sandbox(rec.id)
            if rec2 is not None:
                # One that ran until just now was torn down by whoever marked it exited (its
                # supervisor, the fork server's reaper, or reconcile above): a second teardown
                # would read a table of up to 20,000 elements for nothing (#11). One that had
                # exited before gets its teardown again, in case its first one failed.
                if rec.status == "exited" or rec2.status != "exited":
                    self.teardown(rec2)
                with self.state.tx():
                    self.state.remove_sandbox(rec.id)
            _unlink_quietly(rec.log_path)
        self.dns.changed()
        return out


def _kill_cmd_group(rec: SandboxRecord) -> None:
    """Kill CMD's process group, when the recorded pid is provably still CMD (a pid reused by an
    unrelated process has another start time). teardown kills the sandbox's cgroup; this is the
    fallback where there is none."""
    if rec.cmd_pid and rec.cmd_start is not None and pid_alive(rec.cmd_pid, rec.cmd_start):
        try:
            os.killpg(rec.cmd_pid, signal.SIGKILL)
        except OSError:
            pass


def _collect(*steps: tuple[str, object]) -> list[str]:
    """Run every step (label, callable), keep going past failures, return 'label: error' lines."""
    errors: list[str] = []
    for label, fn in steps:
        try:
            fn()  # type: ignore[operator]
        except PortwrightError as e:
            errors.append(f"{label}: {e}")
    return errors
