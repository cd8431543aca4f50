"""The benchmark run: mechanisms x client placements x scenarios, interleaved over rounds.

Owns the lab (a bench network, the server sandboxes, Docker's peers, the external client) and the
measurement loop. Sandboxes are driven only through the ``portwright`` CLI (see driver.py). Each
sample samples /proc/stat and the publisher processes around one client run and keeps the tool's
raw result; a failed run is recorded as failed with its reason and no number. Everything the lab
creates is torn down in ``close()``, which the CLI calls from ``finally`` (also on Ctrl-C/SIGTERM).
"""

from __future__ import annotations

import json
import os
import platform
import random
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..errors import BadInput, Conflict, KernelError, MissingTool, PortwrightError
from ..kernel import proc
from . import cpu, iperf3, wrk
from .dockerpeer import (
    DOCKER_PROXY,
    DROPIN,
    DockerIptables,
    DockerProxy,
    Forward,
    docker_proxy_available,
    docker_shape,
    dropin_available,
    iptables_available,
)
from .driver import Portwright, run, version_of
from .placement import PLACEMENTS, ExternalClient
from .servers import HTTP_PORT, IPERF_PORT, ports_listening, server_command
from .stats import efficiency

#: Every mechanism the bench knows; ``proxy-dropin`` is portwright-proxy run the dockerd way (a
#: tiny waiter per port, in docker-proxy's place, and the one shared relay), measured when asked for.
MECHANISMS = (
    "host",
    "host-remap",
    "direct",
    "nat",
    "ebpf",
    "proxy",
    "docker-proxy",
    "docker-iptables",
    "proxy-dropin",
    "direct-allowspoof",
    "nat-allowspoof",
    "firewall-host",
)
#: The same paths as direct and nat, from sandboxes run with --allow-spoof: their frames skip the
#: bridge's anti-spoofing checks (issue 19), so the pairs measure what the checks cost.
ANTISPOOF_AB = ("direct", "direct-allowspoof", "nat", "nat-allowspoof")
DEFAULT_MECHANISMS = ("host", "direct", "nat", "ebpf", "proxy", "docker-proxy", "docker-iptables")


def ebpf_unavailable() -> str:
    """Why publish mode ebpf cannot run here ("" when it can): its feature probes (issue 11)."""
    from ..kernel.bpf import probe

    ok, why = probe.connect_rewrite()
    return "" if ok else f"publish mode ebpf: {why}"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    tool: str  # "iperf3" | "wrk"
    unit: str
    title: str
    reverse: bool = False
    close: bool = False
    udp: bool = False


SCENARIOS: dict[str, Scenario] = {
    "bulk-in": Scenario("bulk-in", "iperf3", "Gbit/s", "bulk TCP, client to server (article's ingress)"),
    "bulk-out": Scenario(
        "bulk-out", "iperf3", "Gbit/s", "bulk TCP, server to client (iperf3 -R)", reverse=True
    ),
    "conn": Scenario("conn", "wrk", "req/s", "short connections (HTTP, Connection: close)", close=True),
    "rr": Scenario("rr", "wrk", "req/s", "request/response over keep-alive connections"),
    "bulk-udp": Scenario(
        "bulk-udp",
        "iperf3",
        "Gbit/s",
        "UDP datagrams, client to server (iperf3 -u, unthrottled; what arrived)",
        udp=True,
    ),
}
DEFAULT_SCENARIOS = ("bulk-in", "bulk-out", "conn", "rr")
# Docker's iptables shape is installed for TCP only (as the article measured it).
IPTABLES_UDP_SKIP = "the bench installs Docker's iptables shape for TCP ports only"

# Seconds per run beyond --duration (process start, connection setup; measured ~0.4 s here); for the
# time-left estimate only until real runs have been timed.
RUN_OVERHEAD_S = 0.5
WARMUP_S = 1.0
SETTLE_S = 0.3  # pause between runs so one run's tail does not spill into the next window
# An external client has no route to a sandbox's own address, and portwright's firewall (like
# Docker's FORWARD chain) drops unpublished ingress into its bridges: "direct" is local only.
EXTERNAL_DIRECT_SKIP = (
    "an external client cannot dial a sandbox address; only published ports "
    "reach sandboxes (use --placement local for the direct baseline)"
)
# Subnets for the bench network: a random /24 out of 198.19.200-239 (benchmarking range).
SUBNET_THIRD_OCTETS = range(200, 240)


@dataclass
class Config:
    mechanisms: list[str] = field(default_factory=lambda: list(DEFAULT_MECHANISMS))
    placements: list[str] = field(default_factory=lambda: ["local"])
    scenarios: list[str] = field(default_factory=lambda: list(DEFAULT_SCENARIOS))
    duration: float = 3.0
    rounds: int = 3
    streams: int = 10
    connections: int = 32
    threads: int = 2

    def validate(self) -> None:
        for m in self.mechanisms:
            if m not in MECHANISMS:
                raise BadInput(f"--mechanisms: unknown mechanism {m!r}; choose from {', '.join(MECHANISMS)}")
        for p in self.placements:
            if p not in PLACEMENTS:
                raise BadInput(f"--placement: unknown placement {p!r}; choose from {', '.join(PLACEMENTS)}")
        for s in self.scenarios:
            if s not in SCENARIOS:
                raise BadInput(f"--scenarios: unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
        if not self.mechanisms or not self.placements or not self.scenarios:
            raise BadInput("--mechanisms/--placement/--scenarios: give at least one of each")
        if not 1 <= self.duration <= 3600:
            raise BadInput(f"--duration {self.duration:g}: give whole seconds between 1 and 3600")
        if not 1 <= self.rounds <= 100:
            raise BadInput(f"--rounds {self.rounds}: give a number between 1 and 100")
        if not 1 <= self.streams <= 128:
            raise BadInput(f"--streams {self.streams}: give a number between 1 and 128")
        if not 1 <= self.connections <= 10000 or not 1 <= self.threads <= self.connections:
            raise BadInput("--connections/--threads: need 1 <= threads <= connections <= 10000")

    def to_json(self) -> dict[str, object]:
        return {
            "mechanisms": self.mechanisms,
            "placements": self.placements,
            "scenarios": self.scenarios,
            "duration_s": self.duration,
            "rounds": self.rounds,
            "iperf3_streams": self.streams,
            "wrk_connections": self.connections,
            "wrk_threads": self.threads,
        }

    def planned_runs(self, mechanisms: list[str]) -> int:
        return self.rounds * len(self.placements) * len(self.scenarios) * len(mechanisms)


def machine_info() -> dict[str, object]:
    snap = cpu.read_proc_stat()
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            mem_kib = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    os_name = ""
    try:
        with open("/etc/os-release", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return {
        "cpus": cpu.cpu_count(snap),
        "cpu_model": model,
        "kernel": platform.release(),
        "os": os_name,
        "mem_mib": mem_kib // 1024,
        "hostname": platform.node(),
        "iperf3": version_of(["iperf3", "--version"]),
        "wrk": version_of(["wrk", "-v"]),
        "nginx": version_of(["nginx", "-v"]),
    }


def _ports_in_use() -> set[int]:
    """Local TCP ports of every socket on the host (any state, IPv4 and IPv6), from /proc."""
    used: set[int] = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) > 1:
                        used.add(int(cols[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return used


def free_port_block(size: int, low: int = 20000, high: int = 29000, tries: int = 20) -> int:
    """A base port with ``size`` consecutive TCP ports free on the host: chosen among the gaps
    between ports in use, then bind-tested (another process may take one in between)."""
    for _ in range(tries):
        used = sorted(p for p in _ports_in_use() if low <= p < high)
        gaps: list[tuple[int, int]] = []
        prev = low - 1
        for p in [*used, high]:
            if p - prev - 1 >= size:
                gaps.append((prev + 1, p - size))  # any base in [a, b] fits
            prev = p
        if not gaps:
            break
        a, b = random.choice(gaps)
        base = random.randint(a, b)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                sk = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sk)
                sk.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
        finally:
            for sk in socks:
                sk.close()
    raise Conflict(f"no block of {size} free TCP ports in {low}-{high - 1}; free some ports and retry")


@dataclass
class Target:
    """Where a client goes for one mechanism, and which processes do the publishing."""

    mechanism: str
    iperf_port: int
    http_port: int
    local_addr: str
    external_addr: str
    publisher_pids: Callable[[], list[int]] = lambda: []
    exclude_pids: list[int] = field(default_factory=list)  # the sandbox command's tree
    servers: dict[int, str] = field(default_factory=dict)  # pid -> comm of iperf3/nginx serving it

    def dead_servers(self) -> list[str]:
        """Servers that were running at setup and are gone now (e.g. killed by someone else)."""
        gone = []
        for pid, comm in self.servers.items():
            try:
                with open(f"/proc/{pid}/comm", encoding="ascii", errors="replace") as f:
                    if f.read().strip() == comm:
                        continue
            except OSError:
                pass
            gone.append(f"{comm} (pid {pid})")
        return gone

    activate: Callable[[], None] = lambda: None
    deactivate: Callable[[], list[str]] = lambda: []
    cannot: dict[str, str] = field(default_factory=dict)  # scenario -> why this target cannot run it

    def addr(self, placement: str) -> str:
        return self.local_addr if placement == "local" else self.external_addr


class Lab:
    """Creates the bench's world, and removes all of it in ``close()`` (idempotent)."""

    def __init__(self, config: Config, log: Callable[[str], None], pw: Portwright | None = None) -> None:
        self.config = config
        self.log = log
        self.pw = pw or Portwright()
        self.tag = secrets.token_hex(3)
        self.network = f"pwb{self.tag}"
        self.sandboxes: list[str] = []
        self.server_pids: list[int] = []
        self.tmp = tempfile.mkdtemp(prefix=f"pwb-{self.tag}-")
        self.targets: dict[str, Target] = {}
        self.skipped: dict[str, str] = {}
        self.external: ExternalClient | None = None
        self.proxies: list[DockerProxy] = []  # docker-proxy and drop-in processes, one set per mechanism
        # Undo steps of whatever else an experiment set up (close() runs them first, newest first).
        self.cleanups: list[Callable[[], list[str]]] = []
        self.docker_iptables: DockerIptables | None = None
        self.network_created = False
        self.subnet = ""
        self.bridge = ""
        self.sandbox_info: dict[str, dict[str, object]] = {}
        self.sandbox_servers: dict[str, dict[int, str]] = {}

    # ---- setup ---------------------------------------------------------------------------

    def open(self) -> None:
        want = self.config.mechanisms
        for m, why in (
            ("docker-proxy", docker_proxy_available()),
            ("docker-iptables", iptables_available()),
            ("proxy-dropin", dropin_available()),
            ("ebpf", ebpf_unavailable() if "ebpf" in want else ""),
        ):
            if m in want and why:
                self.skipped[m] = why
                self.log(f"skipping {m}: {why}")
        for tool, pkg in (("iperf3", "iperf3"), ("wrk", "wrk"), ("nginx", "nginx-light")):
            if shutil.which(tool) is None:
                raise MissingTool(tool, pkg)
        if "external" in self.config.placements:
            self.external = ExternalClient(self.tag)
            self.external.create()
        ext = self.external.host_addr if self.external else ""
        need_net = any(m in want for m in MECHANISMS if m not in ("host", "host-remap"))
        base = free_port_block(20)
        udp = any(SCENARIOS[sc].udp for sc in self.config.scenarios)
        if need_net:
            self.create_network()
        if "host" in want:
            self._start("host", "host", base, base + 1, [], None)
            self.targets["host"] = Target("host", base, base + 1, "127.0.0.1", ext)
        if "host-remap" in want:
            # The same servers on their usual ports, in a host-network sandbox whose binds the
            # cgroup BPF programs remap to base+12/13 (issue 12): nothing listens on 5201/8080.
            hp_i, hp_h = base + 12, base + 13
            publish = [f"{hp_i}:{IPERF_PORT}", f"{hp_h}:{HTTP_PORT}"] + (
                [f"{hp_i}:{IPERF_PORT}/udp"] if udp else []
            )
            self._start("host-remap", "host", IPERF_PORT, HTTP_PORT, publish, None, wait_ports=[hp_i, hp_h])
            self.targets["host-remap"] = Target("host-remap", hp_i, hp_h, "127.0.0.1", ext)
        # ebpf: nat plus the connect-time rewrite, so the bench's local clients reach the sandbox
        # straight (issue 11); host ports base+14/15.
        for i, mode in ((2, "nat"), (4, "proxy"), (14, "ebpf")):
            if mode in want and mode not in self.skipped:
                hp_i, hp_h = base + i, base + i + 1
                publish = [f"{hp_i}:{IPERF_PORT}", f"{hp_h}:{HTTP_PORT}"] + (
                    [f"{hp_i}:{IPERF_PORT}/udp"] if udp else []
                )
                name = self._start(mode, self.network, IPERF_PORT, HTTP_PORT, publish, mode)
                sup = self._supervisor(name)
                sup_pids: list[int] = [sup] if sup else []
                cmd_pid = self.sandbox_info[name].get("pid")
                self.targets[mode] = Target(
                    mode,
                    hp_i,
                    hp_h,
                    "127.0.0.1",
                    ext,
                    publisher_pids=_const(sup_pids),
                    exclude_pids=[int(str(cmd_pid))] if cmd_pid else [],
                )
        self._open_allowspoof(want, base, ext, udp)
        self._open_firewall_host(want, base, ext, udp)
        peers: list[str] = [
            m
            for m in ("direct", "docker-proxy", "docker-iptables", "proxy-dropin")
            if m in want and m not in self.skipped
        ]
        if peers:
            self._open_peers(peers, base, ext, udp)
        role = {"host": "host", "host-remap": "host-remap", "nat": "nat", "proxy": "proxy", "ebpf": "ebpf"}
        role |= {"nat-allowspoof": "nat-as", "direct-allowspoof": "plain-as", "firewall-host": "fwhost"}
        for m, t in self.targets.items():
            t.servers = dict(self.sandbox_servers.get(f"pwb{self.tag}-{role.get(m, 'plain')}", {}))

    def _open_firewall_host(self, want: list[str], base: int, ext: str, udp: bool) -> None:
        """``run --firewall host`` (issue 16, host ports base+18/19): external clients go through the
        relay on the host port (the INPUT path), local ones through the 127.0.0.1 DNAT fast path."""
        if "firewall-host" not in want:
            return
        publish = [f"{base + 18}:{IPERF_PORT}", f"{base + 19}:{HTTP_PORT}"] + (
            [f"{base + 18}:{IPERF_PORT}/udp"] if udp else []
        )
        name = self._start(
            "fwhost", self.network, IPERF_PORT, HTTP_PORT, publish, None, flags=["--firewall", "host"]
        )
        sup = self._supervisor(name)
        cmd_pid = self.sandbox_info[name].get("pid")
        self.targets["firewall-host"] = Target(
            "firewall-host",
            base + 18,
            base + 19,
            "127.0.0.1",
            ext,
            publisher_pids=_const([sup] if sup else []),
            exclude_pids=[int(str(cmd_pid))] if cmd_pid else [],
        )

    def _open_allowspoof(self, want: list[str], base: int, ext: str, udp: bool) -> None:
        """direct and nat again, to sandboxes run with --allow-spoof (host ports base+16/17)."""
        if "nat-allowspoof" in want:
            publish = [f"{base + 16}:{IPERF_PORT}", f"{base + 17}:{HTTP_PORT}"] + (
                [f"{base + 16}:{IPERF_PORT}/udp"] if udp else []
            )
            name = self._start(
                "nat-as", self.network, IPERF_PORT, HTTP_PORT, publish, "nat", flags=["--allow-spoof"]
            )
            sup = self._supervisor(name)
            cmd_pid = self.sandbox_info[name].get("pid")
            self.targets["nat-allowspoof"] = Target(
                "nat-allowspoof",
                base + 16,
                base + 17,
                "127.0.0.1",
                ext,
                publisher_pids=_const([sup] if sup else []),
                exclude_pids=[int(str(cmd_pid))] if cmd_pid else [],
            )
        if "direct-allowspoof" in want:
            name = self._start(
                "plain-as", self.network, IPERF_PORT, HTTP_PORT, [], None, flags=["--allow-spoof"]
            )
            ip = str(self.sandbox_info[name]["ip"])
            self.targets["direct-allowspoof"] = Target("direct-allowspoof", IPERF_PORT, HTTP_PORT, ip, ip)

    def _open_peers(self, peers: list[str], base: int, ext: str, udp: bool) -> None:
        """The mechanisms that reach one plain sandbox (no publishing of its own): direct, and
        Docker's peers and the drop-in in front of it, on host ports base+6 .. base+11."""
        name = self._start("plain", self.network, IPERF_PORT, HTTP_PORT, [], None)
        ip = str(self.sandbox_info[name]["ip"])
        if "direct" in peers:
            self.targets["direct"] = Target("direct", IPERF_PORT, HTTP_PORT, ip, ip)
        for mech, binary, off in (("docker-proxy", DOCKER_PROXY, 6), ("proxy-dropin", DROPIN, 10)):
            if mech not in peers:
                continue
            dp = DockerProxy(binary)
            self.proxies.append(dp)
            dp.start("0.0.0.0", base + off, ip, IPERF_PORT)
            dp.start("0.0.0.0", base + off + 1, ip, HTTP_PORT)
            if udp:
                dp.start("0.0.0.0", base + off, ip, IPERF_PORT, proto="udp")
            self.targets[mech] = Target(
                mech, base + off, base + off + 1, "127.0.0.1", ext, publisher_pids=_pids_of(dp)
            )
        if "docker-iptables" in peers:
            self.bridge = _bridge_for(ip)
            shape = docker_shape(
                f"PWB-{self.tag.upper()}",
                self.bridge,
                self.subnet,
                [Forward(base + 8, ip, IPERF_PORT), Forward(base + 9, ip, HTTP_PORT)],
            )
            dip = DockerIptables(shape, self.bridge)
            self.docker_iptables = dip
            # Installed only around its own runs, so its FORWARD rules never sit on the
            # other mechanisms' paths.
            self.targets["docker-iptables"] = Target(
                "docker-iptables",
                base + 8,
                base + 9,
                "127.0.0.1",
                ext,
                activate=dip.install,
                deactivate=dip.remove,
                cannot={"bulk-udp": IPTABLES_UDP_SKIP},
            )

    def create_network(self) -> None:
        octets = list(SUBNET_THIRD_OCTETS)
        random.shuffle(octets)
        last: PortwrightError | None = None
        for third in octets[:8]:
            subnet = f"198.19.{third}.0/24"
            try:
                self.pw.network_create(self.network, subnet)
            except (Conflict, KernelError, BadInput) as e:
                last = e
                continue
            self.network_created = True
            self.subnet = subnet
            return
        assert last is not None
        raise last

    def _start(
        self,
        role: str,
        network: str,
        iperf_port: int,
        http_port: int,
        publish: list[str],
        mode: str | None,
        wait_ports: list[int] | None = None,  # where the servers show up, when not their own ports
        flags: Sequence[str] = (),  # more run flags (--allow-spoof)
    ) -> str:
        name = f"pwb{self.tag}-{role}"
        cmd = server_command(os.path.join(self.tmp, role), iperf_port, http_port)
        self.sandboxes.append(name)
        self.pw.run(name, network, cmd, publish=publish, mode=mode, flags=flags)
        info = self.pw.inspect(name)
        self.sandbox_info[name] = {
            "ip": info.ip,
            "pid": info.pid,
            "supervisor_pid": info.supervisor_pid,
            "ports": list(info.ports),
        }
        if info.pid:
            self.server_pids.append(info.pid)
        self._wait_listening(name, wait_ports or [iperf_port, http_port], host=(network == "host"))
        servers: dict[int, str] = {}
        if info.pid:
            for p in cpu.descendants(info.pid):
                if p == info.pid:
                    continue
                self.server_pids.append(p)
                try:
                    with open(f"/proc/{p}/comm", encoding="ascii", errors="replace") as f:
                        comm = f.read().strip()
                except OSError:
                    continue
                if comm in ("iperf3", "nginx"):
                    servers[p] = comm
        self.sandbox_servers[name] = servers
        return name

    def _supervisor(self, name: str) -> int | None:
        sup = self.sandbox_info[name].get("supervisor_pid")
        return int(str(sup)) if sup else None

    def _wait_listening(self, name: str, ports: list[int], host: bool, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            try:
                if host:
                    out = run(["ss", "-Hltn"], timeout=10).stdout
                else:
                    out = self.pw.exec(name, ["ss", "-Hltn"])
            except PortwrightError:
                out = ""
            if ports_listening(out, ports):
                return
            time.sleep(0.2)
        raise KernelError(
            f"starting iperf3 and nginx in sandbox {name}",
            f"ports {ports} not listening after {timeout:.0f}s",
        )

    # ---- teardown ------------------------------------------------------------------------

    def close(self) -> list[str]:
        errors: list[str] = []
        while self.cleanups:
            try:
                errors += self.cleanups.pop()()
            except (PortwrightError, OSError) as e:
                errors.append(str(e))
        for dp in self.proxies:
            errors += dp.stop()
        self.proxies.clear()
        if self.docker_iptables is not None:
            errors += self.docker_iptables.remove()
            self.docker_iptables = None
        for name in reversed(self.sandboxes):
            self.pw.rm_quiet(name, errors)
        self.sandboxes.clear()
        _reap(self.server_pids, self.tmp)
        self.server_pids.clear()
        if self.network_created:
            try:
                self.pw.network_rm(self.network)
            except PortwrightError as e:
                errors.append(str(e))
            self.network_created = False
        if self.external is not None:
            errors += self.external.remove()
            self.external = None
        shutil.rmtree(self.tmp, ignore_errors=True)
        return errors


def _pids_of(dp: DockerProxy) -> Callable[[], list[int]]:
    def get() -> list[int]:
        return dp.pids

    return get


def _const(pids: list[int]) -> Callable[[], list[int]]:
    def get() -> list[int]:
        return list(pids)

    return get


def _bridge_for(ip: str) -> str:
    p = run(["ip", "-j", "route", "get", ip], timeout=10)
    try:
        dev = str(json.loads(p.stdout)[0]["dev"])
    except (ValueError, IndexError, KeyError) as e:
        raise KernelError(f"ip route get {ip}", p.stderr or str(e)) from e
    return dev


def _reap(pids: list[int], marker: str) -> None:
    """Kill server processes that outlived their sandbox (only ours: cmdline names our temp dir
    or is an iperf3 we started)."""
    for pid in pids:
        args = proc.argv(pid)
        if args is None:
            continue
        if marker.encode() in b"\0".join(args) or args[:2] == [b"iperf3", b"-s"]:
            try:
                os.kill(pid, 9)
            except OSError:
                pass


# ---- one measured run ----------------------------------------------------------------------


def _client_command(
    target: Target,
    scenario: Scenario,
    placement: str,
    config: Config,
    lua_script: str,
    external: ExternalClient | None,
) -> list[str]:
    addr = target.addr(placement)
    if scenario.tool == "iperf3":
        streams = 1 if scenario.udp else config.streams
        cmd = iperf3.client_command(
            addr, target.iperf_port, streams, config.duration, scenario.reverse, udp=scenario.udp
        )
        cmd[1:1] = ["--connect-timeout", "3000"]
    else:
        host = f"[{addr}]" if ":" in addr else addr
        url = f"http://{host}:{target.http_port}/"
        cmd = wrk.client_command(
            url, config.duration, config.connections, config.threads, scenario.close, lua_script
        )
    if placement == "external" and external is not None:
        cmd = external.wrap(cmd)
    return cmd


def run_once(
    target: Target,
    scenario: Scenario,
    placement: str,
    config: Config,
    lua_script: str,
    external: ExternalClient | None,
) -> dict[str, object]:
    """Run one client against one target, sampling CPU and the publisher around it."""
    cmd = _client_command(target, scenario, placement, config, lua_script, external)
    sample: dict[str, object] = {
        "mechanism": target.mechanism,
        "scenario": scenario.name,
        "placement": placement,
        "unit": scenario.unit,
        "command": cmd,
    }
    pids = target.publisher_pids()
    gone = target.dead_servers()
    if gone:
        why = f"server {', '.join(gone)} is no longer running (killed from outside the bench?)"
        sample.update(ok=False, value=None, efficiency=None, error=why)
        return sample
    try:
        target.activate()
    except PortwrightError as e:
        sample.update(ok=False, error=str(e), value=None, efficiency=None)
        return sample
    try:
        pub0 = cpu.read_proc_cost(pids, target.exclude_pids) if pids else None
        s0 = cpu.read_proc_stat()
        t0 = time.monotonic()
        p = run(cmd, timeout=config.duration + 15)
        out, err, rc = p.stdout, p.stderr, p.returncode
        if p.timed_out:
            err = f"client timed out after {config.duration + 15:.0f}s"
        t1 = time.monotonic()
        s1 = cpu.read_proc_stat()
        pub1 = cpu.read_proc_cost(pids, target.exclude_pids) if pids else None
    finally:
        deact_errors = target.deactivate()
    _record(sample, scenario, (out, err, rc), t1 - t0, (s0, s1), deact_errors)
    if pub0 is not None and pub1 is not None:
        dt = pub1.cpu_seconds - pub0.cpu_seconds
        sample["publisher"] = {
            "pids": list(pub1.pids),
            "cpu_seconds": dt,
            "cpu_fraction": dt / (t1 - t0) if t1 > t0 else None,
            "pss_kib": pub1.pss_kib,
        }
    elif pids:
        sample["publisher"] = {"pids": pids, "error": "publisher process not readable"}
    return sample


def _record(
    sample: dict[str, object],
    scenario: Scenario,
    output: tuple[str, str, int],
    window: float,
    stats: tuple[Any, Any],
    deact_errors: list[str],
) -> None:
    """The tool's result and the CPU read around it, into ``sample``."""
    out, err, rc = output
    use = cpu.usage(*stats)
    ncpu = cpu.cpu_count(stats[1])
    busy = use["all"].busy if "all" in use else None
    result: iperf3.IperfResult | wrk.WrkResult
    value: float | None
    if scenario.tool == "iperf3":
        result = iperf3.parse(out, rc, err)
        value = result.gbit_per_second
    else:
        result = wrk.parse(out, rc, err, connections=wrk.connections_of(sample.get("command")))
        value = result.requests_per_second
    error = result.error
    if deact_errors:
        error = (error + "; " if error else "") + "; ".join(deact_errors)
    sample.update(
        ok=result.ok and not deact_errors,
        error=error,
        value=value if result.ok else None,
        window_s=window,
        cpu={
            "ncpu": ncpu,
            "busy": busy,
            "all": use["all"].to_json() if "all" in use else None,
            "per_cpu": [u.to_json() for k, u in sorted(use.items()) if k != "all"],
        },
        efficiency=efficiency(value, busy, ncpu) if result.ok else None,
        tool=result.to_json(),
        raw=_raw(scenario.tool, out, err),
    )


def _raw(tool: str, out: str, err: str) -> dict[str, object]:
    """The tool's own summary as it printed it: iperf3's ``end`` and ``error`` (the per-second
    intervals are left out for size), wrk's JSON line from the hook; stderr's last line."""
    raw: dict[str, object] = {}
    if tool == "iperf3":
        try:
            doc = json.loads(out)
            raw["end"] = doc.get("end")
            if doc.get("error"):
                raw["error"] = doc["error"]
        except (ValueError, AttributeError):
            raw["stdout_tail"] = out[-500:]
    else:
        line = next((ln for ln in out.splitlines() if ln.startswith(wrk.MARKER)), None)
        raw["summary"] = line[len(wrk.MARKER) :] if line else None
        if line is None:
            raw["stdout_tail"] = out[-500:]
    if err.strip():
        raw["stderr_tail"] = err.strip().splitlines()[-1][:500]
    return raw


# ---- the loop ------------------------------------------------------------------------------


class Progress:
    """One status line on stderr: mechanism, round, scenario and the time left."""

    def __init__(self, total: int, per_run_s: float, stream: TextIO) -> None:
        self.total = total
        self.done = 0
        self.per_run = per_run_s
        self.t0 = time.monotonic()
        self.stream = stream
        self.tty = stream.isatty()

    def left_s(self) -> float:
        if self.done:
            per = (time.monotonic() - self.t0) / self.done
        else:
            per = self.per_run
        return per * (self.total - self.done)

    def show(self, rnd: int, rounds: int, placement: str, scenario: str, mechanism: str) -> None:
        left = int(self.left_s())
        stage = "warm-up" if rnd == 0 else f"round {rnd}/{rounds}"
        line = (
            f"bench: {stage} · {placement} · {scenario} · {mechanism} "
            f"· run {self.done + 1}/{self.total} · ~{left // 60}:{left % 60:02d} left"
        )
        self._write(line)

    def _write(self, line: str) -> None:
        w = self.stream.write
        if self.tty:
            w("\r\x1b[K" + line)
        else:
            w(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def round_order(mechs: list[str], rnd: int) -> list[str]:
    """The mechanisms' order in round ``rnd`` (1-based): a cyclic Latin square, so over
    len(mechs) rounds each mechanism runs once in each position. In a fixed order the same
    mechanism always follows the same neighbour (and its heat, caches and TIME_WAIT sockets):
    nat vs Docker's rules came out 0.79 with nat second in every round, 1.15 swapped (issue 13)."""
    if not mechs:
        return []
    k = (rnd - 1) % len(mechs)
    return mechs[k:] + mechs[:k]


def _runs(config: Config, lab: Lab, mechs: list[str]) -> list[tuple[str, str, str]]:
    """(placement, scenario, mechanism) of one round, in the interleaved order, without the
    combinations that cannot run (an external client to "direct", a target's ``cannot``)."""
    return [
        (pl, sc, m)
        for pl in config.placements
        for sc in config.scenarios
        for m in mechs
        if not (pl == "external" and m == "direct") and sc not in lab.targets[m].cannot
    ]


def run_bench(config: Config, lab: Lab, progress_stream: TextIO) -> dict[str, object]:
    """Interleave mechanisms (A B C A B C ...) within each scenario, for ``config.rounds`` rounds."""
    mechs = [m for m in config.mechanisms if m in lab.targets]
    skipped = dict(lab.skipped)
    if "external" in config.placements and "direct" in mechs:
        skipped["direct (external client)"] = EXTERNAL_DIRECT_SKIP
    for m in mechs:
        for sc, why in lab.targets[m].cannot.items():
            if sc in config.scenarios:
                skipped[f"{m} ({sc})"] = why
    lua = os.path.join(lab.tmp, "report.lua")
    with open(lua, "w", encoding="ascii") as f:
        f.write(wrk.LUA_DONE_HOOK)
    samples: list[dict[str, object]] = []
    runs = _runs(config, lab, mechs)
    orders: dict[str, list[str]] = {}
    prog = Progress(config.rounds * len(runs), config.duration + RUN_OVERHEAD_S + SETTLE_S, progress_stream)
    started = time.time()
    try:
        # Warm-up, not recorded: one short keep-alive run per path, so that the first mechanism
        # of round 1 does not pay for cold caches, ARP and conntrack setup on everyone's behalf.
        for placement in config.placements:
            for m in mechs:
                if placement == "external" and m == "direct":
                    continue
                prog.show(0, config.rounds, placement, "rr", m)
                warm = Config(duration=WARMUP_S, connections=config.connections, threads=config.threads)
                run_once(lab.targets[m], SCENARIOS["rr"], placement, warm, lua, lab.external)
        for rnd in range(1, config.rounds + 1):
            order = orders[str(rnd)] = round_order(mechs, rnd)
            for placement, sname, m in _runs(config, lab, order):
                prog.show(rnd, config.rounds, placement, sname, m)
                s = run_once(lab.targets[m], SCENARIOS[sname], placement, config, lua, lab.external)
                s["round"] = rnd
                s["position"] = order.index(m) + 1  # 1: first of its round
                samples.append(s)
                prog.done += 1
                time.sleep(SETTLE_S)
    finally:
        prog.finish()
    return {
        "started": started,
        "finished": time.time(),
        "samples": samples,
        "mechanisms": mechs,
        "order": orders,  # round -> the mechanisms in the order they ran (a Latin square)
        "skipped": skipped,
    }
