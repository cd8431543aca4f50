"""One consistent picture of the host for diagnostics: sockets, nftables, sandboxes, containers.

``collect()`` does all the reading (root); everything downstream (who, ports, audit) is a pure
function of a ``Snapshot``, so tests can build one from recorded inputs. This module also owns
the two questions every diagnostic asks: "what is the process that holds this socket?"
(``classify``) and "whose is this address?" (``resolve``).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import NeedRoot, PortwrightError
from ..kernel import runner, sockets
from ..kernel.sockets import Listener, Process
from ..model import IPAddress, Mapping, Network
from ..state import SandboxRecord, State, pid_alive
from .bpfview import BpfView
from .bpfview import read as read_bpf
from .docker import Container, DockerView, parse_docker_proxy
from .nftview import Ruleset, read_ruleset
from .relayview import RelayPort, for_listener, is_relay
from .relayview import read as read_relays

# Kinds of socket holders, as printed.
APPLICATION = "application"
DOCKER_PROXY = "docker-proxy"
DOCKERD_PLACEHOLDER = "dockerd placeholder"
PW_RESERVATION = "portwright reservation"
PW_PROXY = "portwright proxy"
PW_RELAY = "portwright-proxy relay"  # the shared relay behind dockerd's --userland-proxy-path, port unknown
PW_ORPHAN = "portwright (no sandbox)"
PODMAN_CONMON = "conmon placeholder"
UNKNOWN = "unknown"
PLACEHOLDERS = (DOCKERD_PLACEHOLDER, PW_RESERVATION, PODMAN_CONMON)


@dataclass(frozen=True, slots=True)
class Holder:
    """What the process holding a socket is."""

    kind: str
    pid: int | None = None
    comm: str = ""
    cmdline: str = ""
    sandbox: str | None = None  # portwright sandbox name it belongs to
    container: str | None = None  # Docker container name it belongs to
    proxy_to: tuple[IPAddress, int] | None = None  # where a proxy forwards
    waiter: int | None = None  # the shared relay's port: the waiter dockerd started for it (issue 15)

    def describe(self) -> str:
        who = f"pid {self.pid} {self.comm}" if self.pid else "no visible process"
        extra = ""
        if self.sandbox:
            extra = f" of sandbox {self.sandbox}"
        elif self.container:
            extra = f" of container {self.container}"
        if self.proxy_to:
            ip, port = self.proxy_to
            extra += f" -> {fmt_ep(ip, port)}"
        if self.waiter:
            extra += f", shared relay; dockerd's waiter pid {self.waiter}"
        return f"{who} ({self.kind}{extra})"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Whose address an IP is: a portwright sandbox, a Docker container, or nobody we know."""

    ip: IPAddress
    kind: str  # sandbox | container | host | unknown
    name: str | None = None
    network: str | None = None
    netns: str | None = None  # a path that setns can enter
    ident: str | None = None  # sandbox id / container id


def fmt_ep(ip: IPAddress | None, port: int | None) -> str:
    if ip is None:
        return f"*:{port}"
    h = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{h}:{port}" if port is not None else h


@dataclass
class Snapshot:
    listeners: list[Listener]
    ruleset: Ruleset
    sandboxes: list[SandboxRecord] = field(default_factory=list)
    networks: list[Network] = field(default_factory=list)
    docker: DockerView = field(default_factory=DockerView)
    host4: ipaddress.IPv4Address | None = None
    host6: ipaddress.IPv6Address | None = None
    host_if: str = "eth0"
    local_addrs: tuple[IPAddress, ...] = ()
    route_localnet: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # netns path -> its listeners; injected so tests can replay recorded inner socket tables
    inner: Callable[[str], list[Listener]] = lambda path: []
    alive: Callable[[SandboxRecord], bool] = lambda rec: rec.status == "running"
    pidns: dict[int, str] = field(default_factory=dict)  # pid -> pid namespace id (host-net owners)
    # sandbox id -> names of its host-remap BPF links pinned in bpffs (None: not read)
    remap_links: Callable[[str], list[str] | None] = lambda sid: None
    ppid: dict[int, int] = field(default_factory=dict)
    bpf: BpfView = field(default_factory=BpfView)  # publish mode ebpf's connect-time rewrites (issue 11)
    relay: list[RelayPort] = field(default_factory=list)  # the shared relay's ports (issue 15)

    # ---- lookups
    def sandbox_by_supervisor(self, pid: int) -> SandboxRecord | None:
        for rec in self.sandboxes:
            if rec.supervisor_pid == pid:
                return rec
        return None

    def sandbox_by_id(self, sid: str) -> SandboxRecord | None:
        for rec in self.sandboxes:
            if rec.id == sid or rec.id.startswith(sid) or sid.startswith(rec.id):
                return rec
        return None

    def container_by_ip(self, ip: IPAddress) -> Container | None:
        return self.docker.by_ip(ip)

    def _descends(self, pid: int, root: int) -> bool:
        seen = 0
        while pid and seen < 256:
            if pid == root:
                return True
            pid = self.ppid.get(pid, 0)
            seen += 1
        return False

    def host_net_owner(self, pid: int) -> tuple[str | None, str | None]:
        """(sandbox name, container name) of a host-network sandbox/container that pid belongs to."""
        for rec in self.sandboxes:
            if rec.sandbox.network == "host" and rec.cmd_pid and self._descends(pid, rec.cmd_pid):
                return rec.name, None
        ns = self.pidns.get(pid)
        if ns:
            for c in self.docker.containers:
                if c.running and c.host_network and c.pid and self.pidns.get(c.pid) == ns:
                    return None, c.name
        return None, None

    # ---- the two questions
    def classify(self, proc: Process | None, ln: Listener | None = None) -> Holder:
        if proc is None:
            return Holder(UNKNOWN)
        base = dict(pid=proc.pid, comm=proc.comm, cmdline=proc.cmdline)
        rec = self.sandbox_by_supervisor(proc.pid)
        if rec is None and proc.comm == "portwright":
            # A detached sandbox's reservations may sit in a child of its supervisor (the socket
            # holder next to tini): it belongs to the supervisor's sandbox.
            rec = self.sandbox_by_supervisor(self.ppid.get(proc.pid, 0))
        if rec is not None:
            m = _mapping_for(rec, ln)
            # nat mode serves what the kernel cannot DNAT ([::1], [::]) with an in-process proxy;
            # every other socket of its supervisor is a drop-all reservation.
            proxied = rec.sandbox.publish_mode == "proxy" or (
                ln is not None and ln.ip.version == 6 and (ln.ip.is_loopback or ln.ip.is_unspecified)
            )
            if proxied:
                to = (m.container_ip, m.container_port) if m else None
                if m is not None and rec.sandbox.publish_mode != "proxy":
                    # the nat publisher relays [::1]/[::] to the sandbox's IPv4 address when it has one
                    for v4 in rec.sandbox.mappings:
                        if (
                            v4.container_ip.version == 4
                            and v4.proto == m.proto
                            and v4.host_port == m.host_port
                            and v4.container_port == m.container_port
                        ):
                            to = (v4.container_ip, v4.container_port)
                            break
                return Holder(PW_PROXY, sandbox=rec.name, proxy_to=to, **base)  # type: ignore[arg-type]
            return Holder(PW_RESERVATION, sandbox=rec.name, **base)  # type: ignore[arg-type]
        argv0 = os.path.basename(proc.cmdline.split(" ", 1)[0]) if proc.cmdline else ""
        if proc.comm == "docker-proxy" or argv0 == "docker-proxy" or argv0.startswith("portwright-proxy"):
            args = parse_docker_proxy(["docker-proxy", *proc.cmdline.split()[1:]])
            to = (
                (args.container_ip, args.container_port)
                if args and args.container_ip and args.container_port
                else None
            )
            c = self.container_by_ip(to[0]) if to else None
            return Holder(DOCKER_PROXY, container=c.name if c else None, proxy_to=to, **base)  # type: ignore[arg-type]
        if proc.comm == "dockerd":
            return Holder(DOCKERD_PLACEHOLDER, **base)  # type: ignore[arg-type]
        if is_relay(proc):
            return self._relay_holder(proc, ln)
        if proc.comm == "conmon":
            return Holder(PODMAN_CONMON, **base)  # type: ignore[arg-type]
        if proc.comm == "portwright" or argv0 == "portwright" or " -m portwright" in proc.cmdline:
            return Holder(PW_ORPHAN, **base)  # type: ignore[arg-type]
        sb, cont = self.host_net_owner(proc.pid)
        return Holder(APPLICATION, sandbox=sb, container=cont, **base)  # type: ignore[arg-type]

    def _relay_holder(self, proc: Process, ln: Listener | None) -> Holder:
        """A port of the shared relay: dockerd's userland proxy for the container (and waiter) its
        registration names, as a docker-proxy process would be."""
        reg = for_listener(self.relay, ln) if ln is not None else None
        if reg is None:
            return Holder(PW_RELAY, pid=proc.pid, comm=proc.comm, cmdline=proc.cmdline)
        c = self.container_by_ip(reg.container_ip)
        return Holder(
            DOCKER_PROXY,
            pid=proc.pid,
            comm=proc.comm,
            cmdline=proc.cmdline,
            container=c.name if c else None,
            proxy_to=(reg.container_ip, reg.container_port),
            waiter=reg.waiter_pid,
        )

    def resolve(self, ip: IPAddress) -> Endpoint:
        for rec in self.sandboxes:
            sb = rec.sandbox
            if ip in (sb.ip4, sb.ip6):
                return Endpoint(
                    ip, "sandbox", sb.name, sb.network, sb.netns if self.alive(rec) else None, sb.id
                )
        c = self.container_by_ip(ip)
        if c is not None:
            n = c.network_of(ip)
            return Endpoint(
                ip,
                "container",
                c.name,
                n.name if n else c.network_mode,
                f"/proc/{c.pid}/ns/net" if c.pid else None,
                c.id,
            )
        if ip in self.local_addrs or ip.is_loopback:
            return Endpoint(ip, "host", "this host", None, None)
        return Endpoint(ip, "unknown")

    def sandbox_network_of(self, ip: IPAddress) -> str | None:
        for n in self.networks:
            if ip.version == 4 and ip in n.subnet4:
                return n.name
            if ip.version == 6 and n.subnet6 is not None and ip in n.subnet6:
                return n.name
        return None


def _mapping_for(rec: SandboxRecord, ln: Listener | None) -> Mapping | None:
    """The sandbox mapping a supervisor socket serves (same proto and port; same address if any)."""
    if ln is None:
        return None
    same = [m for m in rec.sandbox.mappings if m.proto == ln.proto and m.host_port == ln.port]
    for m in same:
        if m.host_ip == ln.ip:
            return m
    for m in same:
        if m.family == ln.ip.version:
            return m
    return same[0] if same else None


# ---------------------------------------------------------------- collection (I/O)
def _addrs() -> tuple[ipaddress.IPv4Address | None, ipaddress.IPv6Address | None, str, tuple[IPAddress, ...]]:
    try:
        out = runner.run(["ip", "-j", "addr", "show"], timeout=10).stdout
        links = json.loads(out or "[]")
    except (PortwrightError, ValueError):  # no ip, or it hung: diagnose without host addresses
        links = []
    h4: ipaddress.IPv4Address | None = None
    h6: ipaddress.IPv6Address | None = None
    ifname = "eth0"
    local: list[IPAddress] = []
    for link in links:
        for a in link.get("addr_info", []):
            try:
                ip = ipaddress.ip_address(a["local"])
            except (KeyError, ValueError):
                continue
            local.append(ip)
            if (
                ip.is_loopback
                or ip.is_link_local
                or link.get("ifname", "").startswith(("docker", "br-", "pw"))
            ):
                continue
            if ip.version == 4 and h4 is None:
                h4, ifname = ip, str(link.get("ifname", ifname))
            elif ip.version == 6 and h6 is None:
                h6 = ip
    return h4, h6, ifname, tuple(local)


def _route_localnet() -> dict[str, int]:
    out: dict[str, int] = {}
    base = "/proc/sys/net/ipv4/conf"
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        try:
            with open(f"{base}/{name}/route_localnet") as f:
                out[name] = int(f.read().strip())
        except (OSError, ValueError):
            continue
    return out


def _remap_links(sid: str) -> list[str] | None:
    """The host-remap links pinned for a sandbox (publish.hostremap), None where bpffs is unreadable."""
    from ..publish.hostremap import pin_path

    path = pin_path(f"pw:{sid}")
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except OSError:
        return None


def _proc_tables() -> tuple[dict[int, str], dict[int, int]]:
    pidns: dict[int, str] = {}
    ppid: dict[int, int] = {}
    for e in os.scandir("/proc"):
        if not e.name.isdigit():
            continue
        pid = int(e.name)
        try:
            pidns[pid] = os.readlink(f"/proc/{pid}/ns/pid")
            with open(f"/proc/{pid}/stat") as f:
                ppid[pid] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return pidns, ppid


def collect(what: str = "portwright diagnostics") -> Snapshot:
    """Read everything once. Needs root: other processes' fds, nftables, other namespaces."""
    if os.geteuid() != 0:
        raise NeedRoot(f"{what} (reading every process's sockets and the nftables ruleset)")
    from .nsenter import listeners_in

    notes: list[str] = []
    by_inode = sockets.socket_inodes_by_pid()
    lns = sockets.attach_processes(sockets.raw_listeners(("tcp", "udp")), by_inode)
    rs = read_ruleset()
    try:
        st = State()
        try:
            sbs, nets = st.sandboxes(), st.networks()
        finally:
            st.close()
    except PortwrightError as e:
        sbs, nets = [], []
        notes.append(f"portwright state not readable ({e}); sandboxes were not examined")
    docker = DockerView.connect()
    if docker.note:
        notes.append(docker.note)
    h4, h6, ifname, local = _addrs()
    pidns, ppid = _proc_tables()
    relay, relay_notes = read_relays(lns)
    notes += relay_notes

    def inner(path: str) -> list[Listener]:
        return listeners_in(path, ("tcp", "udp"), by_inode)

    def alive(rec: SandboxRecord) -> bool:
        return rec.status in ("running", "creating") and pid_alive(rec.supervisor_pid, rec.supervisor_start)

    return Snapshot(
        listeners=lns,
        ruleset=rs,
        sandboxes=sbs,
        networks=nets,
        docker=docker,
        host4=h4,
        host6=h6,
        host_if=ifname,
        local_addrs=local,
        route_localnet=_route_localnet(),
        notes=notes,
        inner=inner,
        alive=alive,
        remap_links=_remap_links,
        pidns=pidns,
        ppid=ppid,
        bpf=read_bpf(),
        relay=relay,
    )
