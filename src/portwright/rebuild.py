"""Rebuild the state database from the kernel, after a damaged file was set aside (issue 13).

The kernel is the record of last resort, because every object carries its owner: networks are the
elements of the ``bridges`` set, tagged ``pw-net:<name>``, with their subnets on the bridges
themselves; a sandbox's supervisor names it on its command line (``portwright:<name>`` for the
tini-held shape, ``portwright _supervise <name>`` for a Python supervisor), its id is in the log
``STATE/logs/<id>.log`` its CMD writes to (which also ties it to this state directory; a foreground
sandbox has none and is not rebuilt), its namespace is ``/run/netns/pw-<name>``, its veth
``pwv<id[:11]>`` hangs on a network's bridge, and its NAT elements are tagged ``pw:<id>``.

What cannot be read back is left at its default and said so: the full ``run`` request (its
``-e`` values, ``--expose``) and, for proxy mode, the published ports (the relay holds them in
its own memory). A rebuilt sandbox lists, stops and removes as any other.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import PortwrightError
from .firewall import rules
from .kernel import netlink, netns, proc
from .kernel.logcollect import NAME as COLLECTOR
from .model import Network, Sandbox
from .owners import network_tag, parse_owner, sandbox_owner
from .spec import SandboxSpec
from .state import State, proc_start_time

if TYPE_CHECKING:
    from .firewall.backend import Firewall

HELPERS = (COLLECTOR, "pw-dns")  # a supervisor's children that are never CMD
TINI_PREFIX = "portwright:"  # argv[0] of the tini supervisor and of its socket holder
PY_TITLE = "portwright _supervise "  # the process title of a Python supervisor
VETH_PREFIX = "pwv"  # engine.VETH_PREFIX, + 11 hex of the id
NETNS_PREFIX = "pw-"


@dataclass(frozen=True, slots=True)
class Found:
    """One live sandbox found in the kernel."""

    sid: str
    name: str
    supervisor: int
    cmd_pid: int | None
    cmd: tuple[str, ...]


def parse_supervisor(argv: list[str]) -> tuple[str, tuple[str, ...]] | None:
    """(sandbox name, CMD) from a supervisor's command line, None for any other process. The tini
    supervisor's line carries CMD after ``--``; a Python supervisor's title names only the
    sandbox (its CMD is its child)."""
    if argv and argv[0].startswith(TINI_PREFIX) and "--" in argv:
        return argv[0][len(TINI_PREFIX) :], tuple(argv[argv.index("--") + 1 :])
    line = " ".join(argv)
    if line.startswith(PY_TITLE):
        return line[len(PY_TITLE) :].split(" ")[0], ()
    return None


def _argv(pid: int) -> list[str]:
    return [a.decode(errors="replace") for a in proc.argv(pid) or [] if a]


def _netns_ino(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _ours(name: str, pid: int) -> bool:
    """The process runs in this sandbox's namespace as we see it (``/run/netns/pw-NAME``, or the
    host's for host networking): another host namespace's sandbox of the same name does not."""
    path = netlink.netns_path(NETNS_PREFIX + name)
    if os.path.exists(path) and not os.path.ismount(path):
        return True  # bound in another mount namespace (ip netns exec): the log decides
    mine = _netns_ino(path) or _netns_ino("/proc/self/ns/net")
    return mine is not None and _netns_ino(f"/proc/{pid}/ns/net") == mine


def find_sandboxes(state_dir: str, proc: str = "/proc") -> Iterator[Found]:
    """Every live detached sandbox of this state directory: a supervisor whose CMD writes to
    ``STATE/logs/<id>.log`` (which names the sandbox's id and this directory) and runs in the
    sandbox's namespace. (``setproctitle`` overwrites a supervisor's environment, so
    ``PORTWRIGHT_STATE_DIR`` cannot be read back from /proc; the log can.)"""
    for entry in sorted(os.listdir(proc)):
        if not entry.isdigit():
            continue
        pid = int(entry)
        parsed = parse_supervisor(_argv(pid))
        if parsed is None:
            continue
        name, cmd = parsed
        cmd_pid = _cmd_child(pid)
        if cmd_pid is None or not _ours(name, cmd_pid):
            continue
        sid = _sid_of(cmd_pid, state_dir) or _sid_of(pid, state_dir) or _collector_sid(pid, state_dir)
        if sid is not None:
            yield Found(sid, name, pid, cmd_pid, cmd or tuple(_argv(cmd_pid)))


_SID = re.compile(r"^[0-9a-f]{12}$")


def _sid_of(pid: int, state_dir: str) -> str | None:
    """The sandbox id in the detached log ``STATE/logs/<id>.log`` (or ``<id>.stderr.log``) on
    the process's stdout or stderr."""
    for fd in (1, 2):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        sid = _sid_in(target, state_dir)
        if sid is not None:
            return sid
    return None


def _sid_in(path: str, state_dir: str) -> str | None:
    base = os.path.basename(path).split(".")[0]
    logs = os.path.realpath(os.path.join(state_dir, "logs"))
    return base if os.path.dirname(path) == logs and _SID.match(base) else None


def _collector_sid(sup: int, state_dir: str) -> str | None:
    """The sandbox id in the records file ``STATE/logs/<id>.records`` that the supervisor's log
    collector names on its command line (CMD then writes into the collector's pipes)."""
    for c in proc.children(sup) or []:
        argv = _argv(c)
        if len(argv) > 1 and _program(argv) == COLLECTOR:
            sid = _sid_in(argv[1], state_dir)
            if sid is not None:
                return sid
    return None


def _program(argv: list[str]) -> str:
    """The program's name: argv[0]'s last path part (a title set with setproctitle, such as
    ``pw-dns STATE``, is one argument holding spaces)."""
    return os.path.basename(argv[0].split(" ", 1)[0])


def _cmd_child(sup: int) -> int | None:
    """A supervisor's CMD: its child that is not the socket holder (tini's other child), the log
    collector or the resolver (a daemon whose parent exited is the subreaper's child)."""
    for c in proc.children(sup) or []:
        argv = _argv(c)
        if argv and not argv[0].startswith(TINI_PREFIX) and _program(argv) not in HELPERS:
            return c
    return None


# ------------------------------------------------------------------------------------------------


def _network_from(name: str, bridge: str, table: dict[str, Any]) -> Network | None:
    """A network from its bridge's addresses and its tagged rules (internal: no egress rule)."""
    v4: ipaddress.IPv4Interface | None = None
    v6: ipaddress.IPv6Interface | None = None
    for link in netlink.addresses(bridge):
        for a in link.get("addr_info", []):
            if a.get("scope") != "global":
                continue
            iface = ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
            if isinstance(iface, ipaddress.IPv4Interface) and v4 is None:
                v4 = iface
            elif isinstance(iface, ipaddress.IPv6Interface) and v6 is None:
                v6 = iface
    if v4 is None:
        return None
    tag = network_tag(name)
    post = [
        r
        for r in rules._objects(table, "rule")
        if r.get("comment") == tag and r.get("chain") == rules.CHAIN_NET_POSTROUTING
    ]
    subnets = 1 + (v6 is not None)
    return Network(
        name=name,
        bridge=bridge,
        subnet4=v4.network,
        gateway4=v4.ip,
        subnet6=v6.network if v6 else None,
        gateway6=v6.ip if v6 else None,
        internal=len(post) <= subnets,  # hairpin rules only; egress masquerade adds one per subnet
    )


def _networks(state: State, table: dict[str, Any]) -> list[str]:
    made = []
    known = {n.name for n in state.networks()}
    for bridge, _, comment in rules._set_elements(table, rules.SET_BRIDGES):
        owner = parse_owner(comment or "")
        if owner.kind != "network" or owner.name in known or not isinstance(bridge, str):
            continue
        try:
            net = _network_from(owner.name, bridge, table)
        except PortwrightError:
            continue
        if net is not None:
            with state.tx():
                state.add_network(net)
            made.append(net.name)
    return made


def _addresses(cmd_pid: int) -> tuple[ipaddress.IPv4Address | None, ipaddress.IPv6Address | None, str | None]:
    """eth0's addresses and MAC, read in CMD's namespace (entered by pid: the name may be bound
    in another mount namespace)."""
    ip4 = ip6 = mac = None
    try:
        links = netns.run_in(f"/proc/{cmd_pid}/ns/net", lambda: netlink.addresses("eth0"))
    except PortwrightError:
        links = []
    for link in links:
        mac = link.get("address")
        for a in link.get("addr_info", []):
            if a.get("scope") != "global":
                continue
            addr = ipaddress.ip_address(a["local"])
            if isinstance(addr, ipaddress.IPv4Address):
                ip4 = ip4 or addr
            else:
                ip6 = ip6 or addr
    return ip4, ip6, mac


def _network_of(veth: str, state: State) -> str:
    links = netlink.ip("link", "show", "dev", veth, json_out=True, check=False) or []
    master = links[0].get("master") if links else None
    return next((n.name for n in state.networks() if n.bridge == master), "none")


def _sandbox(f: Found, state: State, table: dict[str, Any]) -> None:
    ns = NETNS_PREFIX + f.name
    netns = netlink.netns_path(ns) if os.path.exists(netlink.netns_path(ns)) else None
    veth = VETH_PREFIX + f.sid[:11]
    bridged = netns is not None and netlink.link_exists(veth)
    ip4, ip6, mac = _addresses(f.cmd_pid) if bridged and f.cmd_pid else (None, None, None)
    tag = rules.owner_tag(sandbox_owner(f.sid))
    maps = tuple(p.mapping() for p in rules.published(table) if p.owner == tag)
    network = _network_of(veth, state) if bridged else ("none" if netns else "host")
    log = os.path.join(state.dir, "logs", f"{f.sid}.log")
    sb = Sandbox(
        id=f.sid,
        name=f.name,
        network=network,
        netns=netns,
        veth=veth if bridged else None,
        ip4=ip4,
        ip6=ip6,
        mac=mac,
        publish_mode="nat" if maps else "none",
        mappings=maps,
    )
    spec = SandboxSpec(
        cmd=f.cmd or ("?",), name=f.name, network=network, detach=True, extra={"rebuilt": True}
    )
    with state.tx():
        state.insert_sandbox(
            sb, list(f.cmd), spec=spec.to_json(), log_path=log if os.path.exists(log) else None
        )
        state.update_sandbox(
            f.sid,
            status="running",
            supervisor_pid=f.supervisor,
            supervisor_start=proc_start_time(f.supervisor),
            cmd_pid=f.cmd_pid,
            cmd_start=proc_start_time(f.cmd_pid) if f.cmd_pid else None,
        )
        state.set_ports(f.sid, list(maps))


def rebuild(state: State, fw: Firewall) -> tuple[list[str], list[str]]:
    """Record every network and live sandbox the kernel holds and state does not: (networks,
    sandboxes) by name. Idempotent."""
    try:
        table = fw.table()
    except PortwrightError:
        table = {}
    nets = _networks(state, table)
    names = []
    for f in find_sandboxes(state.dir):
        if state.find_sandbox(f.sid) is None and not state.name_taken(f.name):
            _sandbox(f, state, table)
            names.append(f.name)
    return nets, names


def warning(aside: str, why: str, nets: list[str], names: list[str]) -> str:
    """The one line saying what was rebuilt and where the damaged file went."""
    what = f"{len(names)} running sandbox(es){': ' + ', '.join(names) if names else ''}"
    what += f" and {len(nets)} network(s){': ' + ', '.join(nets) if nets else ''}"
    return (
        f"portwright: warning: the state database was unreadable ({why}); moved it to {aside} "
        f"and rebuilt {what} from the kernel"
    )
