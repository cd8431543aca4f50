"""The real CNI backend: a Firewall (nftables) for the maps and rules, a Host for the rest.

``KernelBackend`` implements ``plugin.Backend``. Its nftables side is a ``firewall.Firewall``
it is handed (``default_firewall()`` for the plugin, ``Firewall(FakeBackend())`` in the unit
tests), so it publishes exactly as ``portwright run`` does, with the owner tag
``cni:<containerID>:<ifname>:<network>`` (``owners.cni_owner``, always short enough to be an
nft comment as it is) on every map element. Its ``Host`` is everything else the kernel holds:
bridges, sysctls, dockerd's DOCKER-USER chain, holder processes and host sockets.

What portwright's own bridges get from the firewall's per-network rules, a CNI bridge it did
not create (``cni0`` from the reference ``bridge`` plugin) does not have; so for each attachment
on such a bridge this module adds, in the same transaction as its elements and under the same
owner tag (so unpublish removes them too), the masquerade rules of
``rules.bridge_masquerade_commands`` (host-local sources and hairpin traffic DNATed to the
container), and then sets ``route_localnet=1`` on the bridge, so the kernel routes a DNATed
127.0.0.1 out of it at all. Once they are committed it tells the attachment's holder exactly
what it published (a pipe the holder was started with), so the holder keeps that and does not
have to learn it from a table someone may already have changed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..errors import KernelError, MissingTool, NeedRoot, PortInUse
from ..firewall import dockeruser, rules
from ..firewall.backend import Firewall, default_firewall
from ..kernel import proc, runner, sysctl
from ..kernel import sockets as ksockets
from ..model import Mapping
from . import protocol as p
from .holder import HOLDER_MODULE, Binding, holder_pids, told_message

HOLDER_READY_TIMEOUT = 10.0  # seconds for a holder to bind its sockets
HOLDER_STOP_TIMEOUT = 3.0


class Host:
    """The host side of the CNI backend: everything but the nftables table."""

    def __init__(self) -> None:
        # owner -> the write end of its holder's --entries-fd, until ADD tells it what it published
        self._told: dict[str, int] = {}

    def rewrite(self, owner: str, mappings: Sequence[Mapping]) -> None:
        """Local clients connect straight to the container (publish mode ebpf's shared maps, in a
        program set of the plugin's own) where the kernel supports it; else NAT alone serves."""
        from ..kernel.bpf import probe
        from ..publish import ebpf

        if mappings and probe.connect_rewrite()[0]:
            ebpf.add(owner, list(mappings), ebpf.RewriteSet(cni_rewrite_state()))

    def unrewrite(self, owner: str) -> None:
        from ..publish import ebpf

        problems = ebpf.cleanup(owner, ebpf.RewriteSet(cni_rewrite_state()))
        if problems:
            raise KernelError("bpf cleanup", "; ".join(problems))

    def is_bridge(self, name: str) -> bool:
        return os.path.isdir(f"/sys/class/net/{name}/bridge")

    def route_localnet(self, bridge: str) -> str | None:
        """The bridge's route_localnet sysctl ("1" when on), None if it cannot be read."""
        return sysctl.read(sysctl.ROUTE_LOCALNET.format(dev=bridge))

    def enable_route_localnet(self, bridge: str) -> None:
        sysctl.ensure(sysctl.ROUTE_LOCALNET.format(dev=bridge), "1")

    def docker_user_accept(self, bridge: str) -> None:
        """On a dockerd host (FORWARD policy DROP), make DOCKER-USER accept ``bridge`` too; a
        no-op where the chain does not exist."""
        dockeruser.docker_user_ensure([bridge])

    def bridge_ports(self, bridge: str) -> list[str] | None:
        """The interfaces enslaved to ``bridge`` (sysfs ``brif``), None when it is no bridge."""
        try:
            return os.listdir(f"/sys/class/net/{bridge}/brif")
        except OSError:
            return None

    def docker_user_forget(self, bridge: str) -> None:
        dockeruser.docker_user_forget([bridge])

    def docker_user_forget_missing(self) -> None:
        """Drop the DOCKER-USER rules of CNI bridges that are gone (a bridge outlives one
        attachment while others use it)."""
        dockeruser.docker_user_forget_missing()

    def start_holder(self, owner: str, network: str, bindings: Sequence[Binding]) -> None:
        r, w = os.pipe()
        told_r, told_w = os.pipe()  # ours: close-on-exec, so no other child holds the write end
        try:
            pid = runner.spawn_detached(
                [
                    sys.executable,
                    "-m",
                    HOLDER_MODULE,
                    "--owner",
                    owner,
                    "--network",
                    network,
                    "--ready-fd",
                    str(w),
                    "--bindings",
                    json.dumps([b.to_json() for b in bindings]),
                    "--entries-fd",
                    str(told_r),
                ],
                log_path=None,
                pass_fds=(w, told_r),
                what="starting the portwright-cni holder process",
            )
        except BaseException:
            os.close(r)
            os.close(told_w)
            raise
        finally:
            os.close(w)
            os.close(told_r)
        try:
            line = _read_ready(r)
        finally:
            os.close(r)
        if line.startswith("OK"):
            self._told[owner] = told_w
            return
        os.close(told_w)
        self._kill(pid)
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[1] == "EADDRINUSE":
            b = next((x for x in bindings if x.text == parts[2]), None)
            owner_text = (
                ksockets.describe_owner(b.proto, b.port, ipaddress.ip_address(b.ip))
                if b
                else "another socket"
            )
            raise PortInUse(parts[2], owner_text)
        if len(parts) >= 3 and parts[1] == "EADDRNOTAVAIL":
            raise p.CniError(
                p.E_INVALID_CONFIG,
                f"hostIP of {parts[2]} is not an address of this host; use one "
                "of the host's addresses, or leave hostIP empty for all",
            )
        raise KernelError(
            "the portwright-cni holder process", line.strip() or "exited before binding its ports"
        )

    def tell_holder(self, owner: str, nat: Sequence[Mapping], extra_rules: Sequence[dict[str, Any]]) -> None:
        """Tell the holder this process started what ADD published, so it keeps exactly that.
        A holder that is gone meanwhile cannot be told (CHECK reports it missing)."""
        fd = self._told.pop(owner, None)
        if fd is None:
            return
        try:
            data = memoryview(told_message(nat, extra_rules))
            while data:
                data = data[os.write(fd, data) :]
        except OSError:
            pass
        finally:
            os.close(fd)

    @staticmethod
    def _kill(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + HOLDER_STOP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                if not _alive(pid):  # not our child (DEL runs in a later process): read /proc
                    return
            time.sleep(0.01)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def holders(self) -> dict[str, tuple[int, str]]:
        out: dict[str, tuple[int, str]] = {}
        for pid, tag in holder_pids():
            out[tag] = (pid, _holder_network(pid))
        return out

    def stop_holder(self, owner: str) -> None:
        fd = self._told.pop(owner, None)
        if fd is not None:
            os.close(fd)
        for pid, _ in list(holder_pids(owner)):
            self._kill(pid)

    def check_host_port(self, m: Mapping) -> None:
        if not ksockets.port_free(m.proto, m.host_ip, m.host_port):
            raise PortInUse(
                f"{m.host_binding()}/{m.proto}", ksockets.describe_owner(m.proto, m.host_port, m.host_ip)
            )

    def netns_exists(self, path: str) -> bool:
        return bool(path) and os.path.exists(path)


class KernelBackend:
    """``plugin.Backend`` over a Firewall (nftables) and a Host."""

    def __init__(self, firewall: Firewall, host: Host | None = None) -> None:
        self.fw = firewall
        self.host = host if host is not None else Host()
        self._table: dict[str, Any] | None = None

    def _live(self) -> dict[str, Any]:
        if self._table is None:
            self._table = self.fw.table()  # {} when the table does not exist yet
        return self._table

    def _foreign_bridge(self, bridge: str | None) -> bool:
        """A bridge portwright did not create, so it has none of a network's rules."""
        return bool(bridge) and self.host.is_bridge(str(bridge)) and bridge not in rules.bridges(self._live())

    def published(self) -> dict[str, list[Mapping]]:
        out: dict[str, list[Mapping]] = {}
        for e in rules.published(self._live()):
            out.setdefault(e.owner or "an untagged nftables element", []).append(e.mapping())
        # Owners with only rules (or legacy tags the firewall hashed) still count, so GC and DEL see them.
        for tag in rules.owners(self._live()):
            out.setdefault(tag, [])
        return out

    def publish(
        self,
        owner: str,
        mappings: Sequence[Mapping],
        bridge: str | None,
        subnets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
        snat: bool,
        rewrite: Sequence[Mapping] = (),
    ) -> None:
        self._table = None
        self.fw.ensure_base()
        foreign = self._foreign_bridge(bridge)
        extra = (
            rules.bridge_masquerade_commands(owner, str(bridge), mappings, subnets)
            if foreign and snat
            else []
        )
        self._table = None
        # The plugin flushes UDP conntrack itself, once every rule of the attachment is in.
        self.fw.publish(owner, mappings, flush_udp=False, extra_rules=extra)
        self.host.tell_holder(owner, mappings, extra)
        if bridge and foreign:
            if snat and any(m.host_ip.version == 4 for m in mappings):
                self.host.enable_route_localnet(bridge)
            self.host.docker_user_accept(bridge)
        self.host.rewrite(owner, rewrite)

    def unpublish(self, owner: str) -> None:
        self._table = None
        try:
            self.fw.unpublish(owner)
            self.host.docker_user_forget_missing()
        finally:
            self._table = None
            self.host.unrewrite(owner)

    def bridge_ports(self, bridge: str) -> list[str] | None:
        return self.host.bridge_ports(bridge)

    def forget_bridge(self, bridge: str) -> None:
        self.host.docker_user_forget(bridge)

    def flush_conntrack(self, proto: str, port: int) -> None:
        self.fw.flush_conntrack_ports(proto, [port])

    def check_bridge(self, owner: str, bridge: str, snat: bool) -> str | None:
        if not snat or not self._foreign_bridge(bridge):
            return None
        if self.host.route_localnet(bridge) != "1":
            return (
                f"route_localnet is off on bridge {bridge}, so 127.0.0.1 mappings cannot reach the "
                "container; delete and re-add the container to restore it"
            )
        if not rules.owner_rules(self._live(), owner):
            return (
                f"the hairpin/localhost masquerade rules of {owner} on bridge {bridge} are missing from "
                "table inet portwright; delete and re-add the container to restore them"
            )
        return None

    def start_holder(self, owner: str, network: str, bindings: Sequence[Binding]) -> None:
        self.host.start_holder(owner, network, bindings)

    def holders(self) -> dict[str, tuple[int, str]]:
        return self.host.holders()

    def stop_holder(self, owner: str) -> None:
        self.host.stop_holder(owner)

    def check_host_port(self, m: Mapping) -> None:
        self.host.check_host_port(m)

    def netns_exists(self, path: str) -> bool:
        return self.host.netns_exists(path)

    def status(self) -> str | None:
        try:
            self.fw.ensure_base()
        except MissingTool as e:
            return str(e)
        except Exception as e:
            return f"cannot create nftables table inet portwright: {e}"
        return None


def cni_rewrite_state() -> str:
    """The plugin's rewrite set lives beside, not in, ``portwright run``'s: reconcile of run's
    state dir keeps only its own sandboxes' entries, and CNI attachments are not among them."""
    from ..state import state_dir

    return os.path.join(state_dir(), "cni")


def backend() -> KernelBackend:
    """The plugin's backend: nftables in this namespace and the real host. Needs root."""
    if os.geteuid() != 0:
        raise NeedRoot("portwright-cni (nftables and sysctl changes)")
    return KernelBackend(default_firewall(), Host())


def _read_ready(fd: int) -> str:
    """The holder's one status line, waiting at most HOLDER_READY_TIMEOUT (the runtime waits
    for us, so a stuck holder must not hang it)."""
    deadline = time.monotonic() + HOLDER_READY_TIMEOUT
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return "ERR ETIMEDOUT holder did not report within the timeout"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 512)
        if not chunk:  # the holder exited (or closed the pipe) without a status line
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _holder_network(pid: int) -> str:
    args = proc.argv(pid) or []
    try:
        return args[args.index(b"--network") + 1].decode()
    except (ValueError, IndexError):
        return ""
