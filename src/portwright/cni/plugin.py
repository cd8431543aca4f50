"""The CNI commands: ADD, DEL, CHECK, VERSION, STATUS and GC over a small kernel backend.

This module decides *what* each command does; ``protocol`` says how the runtime speaks and
``kernel`` (the real backend) touches nftables, sysctls and holder processes. The backend is an
interface, and the real one is handed its firewall, so the command logic (conflicts, rollback,
idempotent DEL, GC selection) is tested without root: ``kernel.KernelBackend`` over the
in-memory firewall (``firewall.fake``) and a fake host, the way portmap tests its rules.

The record of what an attachment owns is the kernel itself: nft elements and rules tagged
``cni:<containerID>:<ifname>:<network>`` (``owners.cni_owner``), and holder processes carrying
that tag in their command line. DEL and GC therefore work with no prevResult, no netns and no
portwright state directory, and GC of one network tells its attachments from another network's
by the tag alone, holder or not. Tags of the earlier ``cni:<containerID>:<ifname>`` form are
still removed by DEL, accepted by CHECK and collected by GC when their holder names the network.
One thing is per bridge, not per attachment: dockerd's DOCKER-USER accept for a runtime's bridge.
A DEL whose prevResult names the bridge and its veth removes it when no other interface is left on
the bridge (the runtime deletes the bridge later, with no plugin call after it).
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from collections.abc import Callable, Sequence
from collections.abc import Mapping as AbcMapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ..errors import KernelError, MissingTool, NeedRoot, PortInUse, PortwrightError
from ..firewall import rules
from ..model import ANY4, ANY6, Mapping
from ..owners import DIGEST_MARK, cni_legacy_owner, cni_owner, network_field, nft_comment, parse_cni_owner
from ..publish.firewallhost import local_fast_path
from . import protocol as p
from .holder import Binding


@dataclass(frozen=True, slots=True)
class Plan:
    """What one attachment needs in the kernel, derived from config + prevResult."""

    owner: str
    nat: tuple[Mapping, ...]  # published through the shared nftables maps
    bindings: tuple[Binding, ...]  # sockets its holder opens (placeholders and relay listeners)
    bridge: str | None  # the host bridge the container hangs off (for hairpin / localhost)
    subnets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # on that bridge
    #: Every mapping, for the connect-time rewrite of local clients (publish mode ebpf, issue 11):
    #: ``[::1]`` and ``[::]`` in front of an IPv4 container too, which NAT cannot serve.
    rewrite: tuple[Mapping, ...] = ()


class Backend(Protocol):
    """The kernel operations the commands need; ``kernel.KernelBackend`` is the real one."""

    def published(self) -> dict[str, list[Mapping]]: ...  # nft comment (owners.nft_comment) -> NAT mappings
    def publish(
        self,
        owner: str,
        mappings: Sequence[Mapping],
        bridge: str | None,
        subnets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
        snat: bool,
        rewrite: Sequence[Mapping] = (),
    ) -> None: ...
    def unpublish(self, owner: str) -> None: ...  # idempotent: elements, extra rules, rewrites
    def bridge_ports(self, bridge: str) -> list[str] | None: ...  # its interfaces; None: no bridge
    def forget_bridge(self, bridge: str) -> None: ...  # drop its portwright-cni DOCKER-USER rules
    def flush_conntrack(self, proto: str, port: int) -> None: ...
    def check_bridge(self, owner: str, bridge: str, snat: bool) -> str | None: ...  # problem text or None
    def start_holder(self, owner: str, network: str, bindings: Sequence[Binding]) -> None: ...
    def holders(self) -> dict[str, tuple[int, str]]: ...  # owner tag -> (pid, network)
    def stop_holder(self, owner: str) -> None: ...  # idempotent
    def check_host_port(self, m: Mapping) -> None: ...  # PortInUse if a host socket holds it
    def netns_exists(self, path: str) -> bool: ...
    def status(self) -> str | None: ...  # why ADD cannot work right now, or None


def plan(env: p.Env, conf: p.Config, backend: Backend) -> Plan:
    owner = cni_owner(env.container_id, env.ifname, conf.name)
    mappings = p.to_mappings(conf.port_mappings, p.container_addresses(conf.prev_result))
    nat: list[Mapping] = []
    bindings: list[Binding] = []
    obey = conf.firewall == "host"  # issue 16: other machines reach the port through INPUT, via the relay
    for m in mappings:
        capable = rules.nat_capable(m) and not (obey and not m.loopback)
        if capable:
            nat.append(m)
        if obey and not m.loopback:
            nat += local_fast_path([m])  # local clients keep DNAT through 127.0.0.1
        # rules.needs_relay decides. A [::] wildcard that NAT serves needs the relay only for the
        # ::1 traffic that reaches the socket holding the port; without a reservation
        # (reserveHostPort false) that socket is the runtime's, so there is nothing of ours to relay.
        only_loopback = capable and m.host_ip.is_unspecified
        relay = (obey and not m.loopback) or (
            rules.needs_relay(m) and (conf.reserve_host_port or not only_loopback)
        )
        if relay or conf.reserve_host_port:
            bindings.append(
                Binding(
                    m.proto,
                    str(m.host_ip),
                    m.host_port,
                    str(m.container_ip) if relay else "",
                    m.container_port if relay else 0,
                )
            )
    for b in bindings:
        if b.to_ip and b.proto != "tcp" and obey:
            raise p.CniError(
                p.E_INVALID_CONFIG,
                f"firewall host relays only TCP; {b.port}/{b.proto} would bypass the host firewall: "
                "publish it on 127.0.0.1 or set firewall to forward",
            )
        if b.to_ip and b.proto != "tcp":
            raise p.CniError(
                p.E_INVALID_CONFIG,
                f"hostIP {b.ip} for {b.port}/{b.proto} cannot be NATed by the "
                "kernel and portwright relays only TCP there; use 127.0.0.1 for UDP/SCTP",
            )
    hosts = p.host_interfaces(conf.prev_result)
    return Plan(
        owner,
        tuple(nat),
        tuple(bindings),
        hosts[0] if hosts else None,
        p.container_subnets(conf.prev_result),
        rewrite_mappings(mappings),
    )


def rewrite_mappings(mappings: Sequence[Mapping]) -> tuple[Mapping, ...]:
    """The TCP/UDP mappings local clients are rewritten for at connect(): all of them, plus the
    ``[::]`` half of a wildcard mapping that has only an IPv4 one (an IPv4-only container), so
    ``localhost`` resolving to ``::1`` reaches it (the kernel connects the v6 socket to the
    container's v4-mapped address)."""
    out = [m for m in mappings if m.proto in ("tcp", "udp")]
    have6 = {(m.proto, m.host_port) for m in out if m.host_ip == ANY6}
    out += [
        replace(m, host_ip=ANY6) for m in out if m.host_ip == ANY4 and (m.proto, m.host_port) not in have6
    ]
    return tuple(out)


def _overlap(a: Mapping, b: Mapping) -> bool:
    if a.proto != b.proto or a.host_port != b.host_port or a.family != b.family:
        return False
    return a.host_ip == b.host_ip or a.wildcard or b.wildcard


def find_conflict(pl: Plan, published: AbcMapping[str, Sequence[Mapping]]) -> tuple[Mapping, str] | None:
    """The first of our mappings another owner's live mapping already holds, with that owner."""
    wanted = list(pl.nat) + [
        Mapping(b.proto, ipaddress.ip_address(b.ip), b.port, ipaddress.ip_address(b.ip), b.port)  # type: ignore[arg-type]
        for b in pl.bindings
        if b.to_ip
    ]
    for other, theirs in published.items():
        if other == pl.owner:
            continue
        for m in wanted:
            for t in theirs:
                if _overlap(m, t):
                    return m, other
    return None


def describe_owner(tag: str) -> str:
    a = parse_cni_owner(tag)
    if a is None:
        return f"portwright sandbox {tag}"
    net = f" on network {a.network}" if a.network and not a.network.startswith(DIGEST_MARK) else ""
    return f"container {a.shown_id} ({a.ifname}){net}"


def _present(owner: str, backend: Backend) -> bool:
    """Whether the kernel holds anything of ``owner`` (published() is keyed by nft comment, and
    the firewall hashes a comment that is too long)."""
    return nft_comment(owner) in backend.published() or owner in backend.holders()


def _owners(env: p.Env, conf: p.Config, backend: Backend) -> list[str]:
    """The attachment's tag, plus the one an earlier portwright-cni gave it if that is still in
    the kernel (so ADD and DEL replace or remove what an upgrade left)."""
    legacy = cni_legacy_owner(env.container_id, env.ifname)
    return [cni_owner(env.container_id, env.ifname, conf.name)] + (
        [legacy] if _present(legacy, backend) else []
    )


def cmd_add(env: p.Env, conf: p.Config, backend: Backend) -> dict[str, Any]:
    if not backend.netns_exists(env.netns):
        raise p.CniError(
            p.E_UNKNOWN_CONTAINER,
            f"CNI_NETNS {env.netns} does not exist; pass the path of "
            "the container's network namespace (e.g. /var/run/netns/NAME)",
        )
    result = p.passthrough_result(conf)
    pl = plan(env, conf, backend)
    # A repeated ADD (a runtime retrying after a timeout) replaces the earlier attempt.
    for owner in _owners(env, conf, backend):
        _teardown(owner, backend)
    if not pl.nat and not pl.bindings:
        return result
    clash = find_conflict(pl, backend.published())
    if clash is not None:
        m, other = clash
        err = PortInUse(f"{m.host_binding()}/{m.proto}", describe_owner(other))
        raise p.CniError(p.E_PORT_IN_USE, str(err))
    if not conf.reserve_host_port:
        # Nobody will hold the ports (the runtime binds them after ADD), but a host program that
        # already listens there would silently lose its traffic to the DNAT: refuse instead.
        for m in pl.nat:
            backend.check_host_port(m)
    with ExitStack() as undo:
        if pl.nat:  # undone last: the holder (which restores entries) is stopped before
            undo.callback(backend.unpublish, pl.owner)
        if pl.bindings:
            backend.start_holder(pl.owner, conf.name, pl.bindings)
            undo.callback(backend.stop_holder, pl.owner)
        if pl.nat:
            backend.publish(pl.owner, pl.nat, pl.bridge, pl.subnets, conf.snat, pl.rewrite)
            for proto, port in sorted({(m.proto, m.host_port) for m in pl.nat if m.proto == "udp"}):
                # A client that sent before the mapping existed has a conntrack entry aimed at the
                # host; flush it so its next datagram is DNATed (Docker issue 8795).
                backend.flush_conntrack(proto, port)
        undo.pop_all()
    return result


def _teardown(owner: str, backend: Backend) -> list[str]:
    """Remove everything tagged ``owner``; keep going past errors and return them."""
    errors: list[str] = []
    # The holder first: it puts back its attachment's entries after a firewall reload (issue 13),
    # so it must be gone before they are removed, or it would restore them.
    for what, fn in (("holder process", backend.stop_holder), ("nft entries", backend.unpublish)):
        try:
            fn(owner)
        except Exception as e:  # teardown goes on; the caller reports every failure
            errors.append(f"{what} of {owner}: {e}")
    return errors


def bridge_unused(ports: Sequence[str], own: Sequence[str]) -> bool:
    """Whether a bridge with interfaces ``ports`` serves nothing once the attachment whose host
    interfaces are ``own`` (its veth) is gone: then its DOCKER-USER accept can go too. Any
    other port (another container, an uplink) keeps it."""
    return not set(ports) - set(own)


def _release_bridge(conf: p.Config, backend: Backend) -> list[str]:
    """DEL with a prevResult names the bridge and the attachment's veth: the last attachment
    on a bridge removes the bridge's DOCKER-USER rules, as the runtime deletes the bridge later
    (``podman network rm``) with no plugin call left to tidy up after it."""
    hosts = p.host_interfaces(conf.prev_result)
    if not hosts:
        return []
    try:
        ports = backend.bridge_ports(hosts[0])
        if ports is not None and bridge_unused(ports, hosts[1:]):
            backend.forget_bridge(hosts[0])
    except Exception as e:  # teardown goes on; the caller reports every failure
        return [f"DOCKER-USER rules of bridge {hosts[0]}: {e}"]
    return []


def cmd_del(env: p.Env, conf: p.Config, backend: Backend) -> None:
    errors = [e for owner in _owners(env, conf, backend) for e in _teardown(owner, backend)]
    errors += _release_bridge(conf, backend)
    if errors:
        raise p.CniError(
            p.E_KERNEL, "DEL could not remove everything; fix the cause and run DEL again", "; ".join(errors)
        )


def cmd_check(env: p.Env, conf: p.Config, backend: Backend) -> None:
    if not backend.netns_exists(env.netns):
        raise p.CniError(
            p.E_UNKNOWN_CONTAINER, f"CNI_NETNS {env.netns} does not exist; the container is gone"
        )
    pl = plan(env, conf, backend)
    legacy = cni_legacy_owner(env.container_id, env.ifname)
    if not _present(pl.owner, backend) and _present(legacy, backend):
        pl = replace(pl, owner=legacy)  # added by an earlier portwright-cni: check what it made
    holders = backend.holders()
    live = backend.published().get(nft_comment(pl.owner), [])
    missing = [m for m in pl.nat if m not in live]
    if missing:
        raise p.CniError(
            p.E_CHECK_FAILED,
            f"port mapping {missing[0].docker_format()} of "
            f"{describe_owner(pl.owner)} is missing from nftables table inet portwright; "
            "delete and re-add the container (DEL then ADD) to restore it",
            "missing: " + ", ".join(m.docker_format() for m in missing),
        )
    if pl.bindings and pl.owner not in holders:
        raise p.CniError(
            p.E_CHECK_FAILED,
            f"the portwright holder process of {describe_owner(pl.owner)} is "
            "gone, so its host ports are unreserved; delete and re-add the container",
        )
    if pl.nat and pl.bridge:
        problem = backend.check_bridge(pl.owner, pl.bridge, conf.snat)
        if problem:
            raise p.CniError(p.E_CHECK_FAILED, problem)


def gc_targets(
    valid: Sequence[p.Attachment], network: str, owners: set[str], holders: AbcMapping[str, tuple[int, str]]
) -> list[str]:
    """The CNI owners GC of ``network`` removes: those of this network not in ``valid``.

    A tag names its network, so another network's attachment is never collected, held or not.
    A legacy tag (no network in it) is collected only when its holder names this network; one
    without a holder could be any network's, so GC leaves it to DEL, and so does a legacy tag
    the firewall hashed (``h:``, indistinguishable from a sandbox's).
    """
    keep = {cni_owner(a.container_id, a.ifname, network) for a in valid}
    keep |= {cni_legacy_owner(a.container_id, a.ifname) for a in valid}
    mine = network_field(network)
    out = []
    for owner in sorted(owners | set(holders)):
        tag = parse_cni_owner(owner)
        if tag is None or owner in keep:
            continue
        if tag.network is None:
            held = holders.get(owner)
            if held is None or held[1] != network:
                continue
        elif tag.network != mine:
            continue  # another CNI network's attachment: its own GC decides
        out.append(owner)
    return out


def cmd_gc(conf: p.Config, backend: Backend) -> None:
    if conf.valid_attachments is None:
        raise p.CniError(
            p.E_INVALID_CONFIG,
            "GC got no cni.dev/valid-attachments; pass the list of "
            "attachments that are still valid (an empty list removes them all)",
        )
    targets = gc_targets(conf.valid_attachments, conf.name, set(backend.published()), backend.holders())
    errors: list[str] = []
    for owner in targets:
        errors.extend(_teardown(owner, backend))
    if errors:
        raise p.CniError(
            p.E_KERNEL, f"GC could not remove {len(errors)} stale resources; run GC again", "; ".join(errors)
        )


def cmd_status(backend: Backend) -> None:
    problem = backend.status()
    if problem:
        raise p.CniError(p.E_PLUGIN_NOT_AVAILABLE, problem)


def _from_portwright(e: PortwrightError) -> p.CniError:
    if isinstance(e, PortInUse):
        return p.CniError(p.E_PORT_IN_USE, str(e))
    if isinstance(e, MissingTool):
        return p.CniError(p.E_MISSING_TOOL, str(e))
    if isinstance(e, NeedRoot):
        return p.CniError(p.E_NEED_ROOT, str(e))
    if isinstance(e, KernelError):
        return p.CniError(p.E_KERNEL, str(e), e.detail)
    return p.CniError(p.E_INVALID_CONFIG, str(e))


def run(
    environ: AbcMapping[str, str], stdin: bytes, backend_factory: Callable[[], Backend]
) -> tuple[int, str]:
    """One plugin invocation: (exit status, stdout text). Never raises."""
    version = p.error_version(stdin)
    try:
        env = p.parse_env(environ)
        if env.command == "VERSION":
            try:
                version = p.negotiate_version(json.loads(stdin or b"{}"))
            except (p.CniError, ValueError, TypeError, AttributeError):
                pass  # a runtime probing versions gets our list in our newest version
            return 0, json.dumps(p.version_result(version))
        conf = p.parse_config(stdin, env.command)
        version = conf.cni_version
        if conf.state_dir is not None:  # read by everything below (state.state_dir)
            os.environ["PORTWRIGHT_STATE_DIR"] = conf.state_dir
        backend = backend_factory()
        if env.command == "ADD":
            return 0, json.dumps(cmd_add(env, conf, backend))
        if env.command == "DEL":
            cmd_del(env, conf, backend)
        elif env.command == "CHECK":
            cmd_check(env, conf, backend)
        elif env.command == "GC":
            cmd_gc(conf, backend)
        elif env.command == "STATUS":
            cmd_status(backend)
        return 0, ""
    except p.CniError as e:
        return 1, json.dumps(e.to_json(version))
    except PortwrightError as e:
        return 1, json.dumps(_from_portwright(e).to_json(version))
    except Exception as e:  # the runtime must always get the spec's error JSON
        return 1, json.dumps(
            p.CniError(
                p.E_INTERNAL,
                f"portwright-cni internal error: {type(e).__name__}: {e}; please report it",
                repr(e),
            ).to_json(version)
        )


def main() -> None:
    from .kernel import backend

    stdin = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    code, out = run(os.environ, stdin, backend)
    if out:
        sys.stdout.write(out + "\n")
    sys.stdout.flush()
    sys.exit(code)
