"""The engine: networks, and the parts of the sandbox lifecycle that outlive a supervisor.

Network create/remove, the reconcile pass that clears up after dead supervisors, and the
exact-once teardown of a sandbox's kernel objects. The live part of a sandbox (setup, CMD,
publishing, waiting) is in supervisor.py. Teardown never stops at the first error: it goes on
and reports every failure at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack

from . import ipam
from .errors import BadInput, Conflict, KernelError, NeedRoot, NotFound, PortwrightError
from .firewall import nft
from .kernel import cgroup, netlink, sysctl
from .model import Network
from .spec import check_name
from .state import SandboxRecord, State, pid_alive

DEFAULT_NETWORK = "pw0"
RESERVED_NETWORK_NAMES = ("host", "none", "bridge", "default")
NETNS_PREFIX = "pw-"
OWNER_PREFIX = "pw:"


def _explicit_subnet(text: str, version: int, flag: str, used: list[ipam.AnyNet]) -> ipam.AnyNet:
    """A user-given subnet, refused when it overlaps a network or route already on the host."""
    net = ipam.parse_subnet(text, version, flag)
    clash = ipam.overlapping(net, used)
    if clash is not None:
        pool = ipam.POOL4 if version == 4 else ipam.POOL6
        raise Conflict(f"{flag} {net} overlaps {clash}, already in use on this host; "
                       f"choose a free range (e.g. within {pool})")
    return net


def _unlink_quietly(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise NeedRoot(what)


def owner_tag(sandbox_id: str) -> str:
    """The comment every kernel object of a sandbox carries (nft elements, rules)."""
    return OWNER_PREFIX + sandbox_id


def new_id() -> str:
    return secrets.token_hex(6)


class Engine:
    def __init__(self, state: State | None = None) -> None:
        self.state = state or State()

    # ------------------------------------------------------------------ networks
    def create_network(self, name: str, subnet: str | None = None, ipv6: bool = False,
                       subnet6: str | None = None, internal: bool = False) -> Network:
        require_root("creating a network")
        check_name(name)
        if name in RESERVED_NETWORK_NAMES:
            raise BadInput(f"network name {name!r} is reserved; choose another name")
        if self.state.find_network(name):
            raise Conflict(f"network {name!r} already exists; remove it with 'portwright network rm {name}'")
        if subnet6 and not ipv6:
            ipv6 = True
        if ipv6 and not sysctl.ipv6_enabled():
            raise BadInput("--ipv6: IPv6 is disabled on this host (net.ipv6.conf.all.disable_ipv6=1)")
        with self._network_lock(), ExitStack() as stack:
            with self.state.tx():
                used = [ipaddress.ip_network(p, strict=False) for p in netlink.used_prefixes()]
                mine = self.state.networks()
                used += [n.subnet4 for n in mine] + [n.subnet6 for n in mine if n.subnet6]
                net4 = (_explicit_subnet(subnet, 4, "--subnet", used) if subnet
                        else ipam.carve4(u for u in used if u.version == 4))
                net6 = None
                if ipv6:
                    net6 = (_explicit_subnet(subnet6, 6, "--subnet6", used) if subnet6
                            else ipam.carve6(u for u in used if u.version == 6))
                bridge = "pw-" + secrets.token_hex(4)
                net = Network(name=name, bridge=bridge, subnet4=net4,  # type: ignore[arg-type]
                              gateway4=ipam.gateway(net4),  # type: ignore[arg-type]
                              subnet6=net6, gateway6=ipam.gateway(net6) if net6 else None,  # type: ignore[arg-type]
                              internal=internal)
                self.state.add_network(net)
            stack.callback(self._forget_network, name)
            addrs = [f"{net.gateway4}/{net.subnet4.prefixlen}"]
            if net.subnet6 is not None:
                addrs.append(f"{net.gateway6}/{net.subnet6.prefixlen}")
            netlink.create_bridge(bridge, addrs)
            stack.callback(netlink.delete_link, bridge)
            sysctl.ensure(sysctl.ROUTE_LOCALNET.format(dev=bridge), "1")
            if not internal:
                sysctl.ensure(sysctl.IP_FORWARD, "1")
            if net.subnet6 is not None and not internal:
                sysctl.ensure(sysctl.IP6_FORWARD, "1")
            nft.ensure_base()
            nft.add_network(net)
            stack.callback(nft.remove_network, name)
            self.sync_docker_user()
            stack.pop_all()
        return net

    def _forget_network(self, name: str) -> None:
        with self.state.tx():
            self.state.remove_network(name)

    def ensure_network(self, name: str) -> Network:
        net = self.state.find_network(name)
        if net is not None:
            return net
        if name != DEFAULT_NETWORK:
            raise NotFound(f"network {name!r} not found; create it with 'portwright network create {name}' "
                           "or list them with 'portwright network ls'")
        try:
            return self.create_network(DEFAULT_NETWORK, ipv6=sysctl.ipv6_enabled())
        except Conflict:
            # Another concurrent run created it first.
            return self.state.network(DEFAULT_NETWORK)

    def remove_network(self, name: str) -> None:
        require_root("removing a network")
        with self._network_lock():
            # The in-use check and the removal are one transaction: a 'run' that records its
            # sandbox first makes this refuse; one that comes after finds the network gone.
            with self.state.tx():
                net = self.state.network(name)
                users = [r.name for r in self.state.sandboxes()
                         if r.sandbox.network == name and r.status != "exited"]
                if users:
                    raise Conflict(f"network {name!r} is in use by sandbox(es) {', '.join(users)}; "
                                   "remove them first ('portwright rm -f NAME')")
                for r in self.state.sandboxes():
                    if r.sandbox.network == name:
                        self.state.remove_sandbox(r.id)
                self.state.remove_network(name)
            errors: list[str] = []
            try:
                nft.remove_network(name)
            except PortwrightError as e:
                errors.append(f"nft: {e}")
            try:
                netlink.delete_link(net.bridge)
            except PortwrightError as e:
                errors.append(f"bridge: {e}")
        self.sync_docker_user()
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
                nft.docker_user_sync([n.bridge for n in self.state.networks()])
        except (PortwrightError, OSError):
            pass

    # ------------------------------------------------------------------ sandboxes
    def teardown(self, rec: SandboxRecord) -> list[str]:
        """Remove every kernel object a sandbox may have; errors are collected, not raised."""
        errors: list[str] = []
        sb = rec.sandbox
        try:
            nft.unpublish(owner_tag(sb.id))
        except PortwrightError as e:
            errors.append(f"nft: {e}")
        if sb.veth:
            try:
                netlink.delete_link(sb.veth)
            except PortwrightError as e:
                errors.append(f"veth {sb.veth}: {e}")
        if sb.netns:
            try:
                netlink.netns_delete(os.path.basename(sb.netns))
            except PortwrightError as e:
                errors.append(f"netns {sb.netns}: {e}")
        errors += cgroup.kill(cgroup.sandbox_path(sb.id))
        addrs = [str(a) for a in (sb.ip4, sb.ip6) if a is not None]
        if addrs:
            # As Docker does when an endpoint goes: a UDP flow that still arrives for this
            # sandbox's published port must not follow the address to the next sandbox given it.
            try:
                nft.flush_conntrack_addrs(addrs)
            except PortwrightError as e:
                errors.append(f"conntrack: {e}")
        return errors

    def mark_exited(self, rec: SandboxRecord, exit_code: int | None) -> None:
        with self.state.tx():
            if rec.spec.get("detach") and not rec.spec.get("remove"):
                self.state.set_ports(rec.id, [])
                self.state.update_sandbox(rec.id, status="exited", exit_code=exit_code, ip4=None, ip6=None,
                                          supervisor_pid=None, cmd_pid=None)
            else:
                self.state.remove_sandbox(rec.id)
        if not rec.spec.get("detach") or rec.spec.get("remove"):
            _unlink_quietly(rec.log_path)

    def reconcile(self) -> list[str]:
        """Clear up after supervisors that died (kill -9, crash, reboot of the state dir's owner)."""
        cleaned = []
        for rec in self.state.sandboxes():
            if rec.status == "exited" or pid_alive(rec.supervisor_pid, rec.supervisor_start):
                continue
            if rec.status == "creating" and time.time() - rec.created < 2 and rec.supervisor_pid is None:
                continue  # just being recorded by a live process that has not set its pid yet
            # teardown kills the sandbox's cgroup; the process group is the fallback on hosts
            # without cgroup2, and only while the recorded pid is provably still CMD (a pid
            # that was reused by an unrelated process has another start time).
            if rec.cmd_pid and rec.cmd_start is not None and pid_alive(rec.cmd_pid, rec.cmd_start):
                try:
                    os.killpg(rec.cmd_pid, signal.SIGKILL)
                except OSError:
                    pass
            self.teardown(rec)
            self.mark_exited(rec, None)
            cleaned.append(rec.name)
        if self.state.networks():
            # dockerd may have started since our networks were made: its FORWARD policy is DROP,
            # so make sure its DOCKER-USER hook accepts our bridges (idempotent, cheap).
            self.sync_docker_user()
        return cleaned

    def stop(self, name: str, timeout: float = 10.0) -> None:
        rec = self.state.sandbox(name)
        if rec.status == "exited":
            return
        if pid_alive(rec.supervisor_pid, rec.supervisor_start):
            assert rec.supervisor_pid is not None
            from .supervisor import grace_path

            os.makedirs(os.path.dirname(grace_path(self.state.dir, rec.id)), exist_ok=True)
            with open(grace_path(self.state.dir, rec.id), "w") as f:
                f.write(str(timeout))
            os.kill(rec.supervisor_pid, signal.SIGTERM)
            deadline = time.time() + timeout + 5
            while time.time() < deadline and pid_alive(rec.supervisor_pid, rec.supervisor_start):
                time.sleep(0.05)
            if pid_alive(rec.supervisor_pid, rec.supervisor_start):
                os.kill(rec.supervisor_pid, signal.SIGKILL)
                time.sleep(0.1)
        self.reconcile()

    def remove(self, name: str, force: bool = False) -> None:
        rec = self.state.sandbox(name)
        if rec.status != "exited":
            if not force:
                raise Conflict(f"sandbox {rec.name!r} is {rec.status}; stop it first or use 'portwright rm -f'")
            self.stop(name)
        rec2 = self.state.find_sandbox(rec.id)
        if rec2 is not None:
            self.teardown(rec2)
            with self.state.tx():
                self.state.remove_sandbox(rec.id)
        _unlink_quietly(rec.log_path)
