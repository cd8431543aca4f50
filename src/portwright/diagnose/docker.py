"""What Docker knows: containers, their addresses and publications, and docker-proxy's arguments.

Reads the Docker API (``/var/run/docker.sock`` or ``$DOCKER_HOST``) through the ``docker``
SDK. A daemon that is not running, or an SDK that is not installed, is not an error: the view
is empty and ``note`` says why, so diagnostics skip the Docker part and say so. The parsing of
``docker inspect`` JSON and of docker-proxy command lines is pure, for recorded-input tests.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import MissingTool
from ..model import IPAddress

DOCKER_PROXY_COMMS = ("docker-proxy",)


@dataclass(frozen=True, slots=True)
class ContainerNet:
    name: str  # Docker network name (bridge, a user network, host)
    ip4: ipaddress.IPv4Address | None
    ip6: ipaddress.IPv6Address | None
    gateway4: ipaddress.IPv4Address | None = None
    prefix4: int | None = None


@dataclass(frozen=True, slots=True)
class Published:
    """One entry of ``NetworkSettings.Ports``: host_ip:host_port -> container port."""

    proto: str
    host_ip: IPAddress
    host_port: int
    container_port: int


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    name: str
    running: bool
    pid: int  # State.Pid (0 when not running)
    network_mode: str  # "bridge", "host", "none", "container:<id>", or a network name
    networks: tuple[ContainerNet, ...] = ()
    published: tuple[Published, ...] = ()
    exposed: tuple[tuple[int, str], ...] = ()  # Config.ExposedPorts as (port, proto)
    image: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def host_network(self) -> bool:
        return self.network_mode == "host"

    def addresses(self) -> list[IPAddress]:
        out: list[IPAddress] = []
        for n in self.networks:
            if n.ip4:
                out.append(n.ip4)
            if n.ip6:
                out.append(n.ip6)
        return out

    def network_of(self, ip: IPAddress) -> ContainerNet | None:
        for n in self.networks:
            if ip in (n.ip4, n.ip6):
                return n
        return None


def _port_key(key: str) -> tuple[int, str]:
    port, _, proto = key.partition("/")
    return int(port), proto or "tcp"


def container_from_inspect(d: dict[str, Any]) -> Container:
    """Build a Container from one ``docker inspect`` object (the API's /containers/ID/json)."""
    state = d.get("State") or {}
    settings = d.get("NetworkSettings") or {}
    host_config = d.get("HostConfig") or {}
    config = d.get("Config") or {}
    nets = []
    for name, n in sorted((settings.get("Networks") or {}).items()):
        n = n or {}
        ip4 = ipaddress.IPv4Address(n["IPAddress"]) if n.get("IPAddress") else None
        ip6 = ipaddress.IPv6Address(n["GlobalIPv6Address"]) if n.get("GlobalIPv6Address") else None
        gw = ipaddress.IPv4Address(n["Gateway"]) if n.get("Gateway") else None
        nets.append(ContainerNet(name, ip4, ip6, gw, n.get("IPPrefixLen") or None))
    published = []
    for key, binds in sorted((settings.get("Ports") or {}).items()):
        cport, proto = _port_key(key)
        for b in binds or ():
            host_ip = b.get("HostIp") or "0.0.0.0"
            if not b.get("HostPort"):
                continue
            published.append(Published(proto, ipaddress.ip_address(host_ip), int(b["HostPort"]), cport))
    exposed = tuple(sorted(_port_key(k) for k in (config.get("ExposedPorts") or {})))
    return Container(
        id=str(d.get("Id", "")),
        name=str(d.get("Name", "")).lstrip("/"),
        running=bool(state.get("Running")),
        pid=int(state.get("Pid") or 0),
        network_mode=str(host_config.get("NetworkMode") or "default"),
        networks=tuple(nets),
        published=tuple(published),
        exposed=exposed,
        image=str(config.get("Image") or ""),
    )


@dataclass(frozen=True, slots=True)
class DockerProxyArgs:
    """The arguments of one docker-proxy process (``-proto tcp -host-ip 0.0.0.0 -host-port 80 ...``)."""

    proto: str
    host_ip: IPAddress | None
    host_port: int | None
    container_ip: IPAddress | None
    container_port: int | None


def parse_docker_proxy(cmdline: str | Iterable[str]) -> DockerProxyArgs | None:
    """Parse a docker-proxy command line; None when it is not one or lacks the port arguments."""
    args = cmdline.split() if isinstance(cmdline, str) else list(cmdline)
    if not args or os.path.basename(args[0]) not in DOCKER_PROXY_COMMS:
        return None
    vals: dict[str, str] = {}
    i = 1
    while i < len(args):
        a = args[i]
        if a.startswith("-"):
            key = a.lstrip("-")
            if "=" in key:
                key, _, v = key.partition("=")
                vals[key] = v
            elif i + 1 < len(args) and not args[i + 1].startswith("-"):
                vals[key] = args[i + 1]
                i += 1
            else:
                vals[key] = ""
        i += 1

    def ip(key: str) -> IPAddress | None:
        try:
            return ipaddress.ip_address(vals[key]) if vals.get(key) else None
        except ValueError:
            return None

    def port(key: str) -> int | None:
        v = vals.get(key, "")
        return int(v) if v.isdigit() else None

    return DockerProxyArgs(
        proto=vals.get("proto", "tcp") or "tcp",
        host_ip=ip("host-ip"),
        host_port=port("host-port"),
        container_ip=ip("container-ip"),
        container_port=port("container-port"),
    )


@dataclass
class DockerView:
    """The containers of one Docker daemon, or an empty view with a note saying why."""

    containers: list[Container] = field(default_factory=list)
    available: bool = False
    note: str = ""
    networks: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = field(default_factory=dict)

    @classmethod
    def connect(cls, timeout: float = 5.0) -> DockerView:
        try:
            import docker
        except ImportError as e:  # a dependency of portwright: never skip Docker silently
            raise MissingTool("the docker Python SDK", "python3-docker (or pip install docker)") from e
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        try:
            client = docker.from_env(timeout=timeout)
            client.ping()
        except Exception as e:  # the SDK raises many types; all mean "no daemon to ask"
            reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            if "Permission denied" in reason:
                reason = "permission denied: needs root or the docker group"
            elif any(s in reason for s in ("No such file", "Connection refused", "FileNotFoundError")):
                return cls(note=f"Docker daemon not running at {where}; Docker part skipped")
            return cls(note=f"Docker daemon not reachable at {where} ({reason}); Docker part skipped")
        try:
            conts = [container_from_inspect(c.attrs) for c in client.containers.list(all=True)]
            nets: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
            for n in client.networks.list():
                for cfg in (n.attrs.get("IPAM") or {}).get("Config") or ():
                    if cfg.get("Subnet"):
                        nets.setdefault(n.name, []).append(ipaddress.ip_network(cfg["Subnet"], strict=False))
        except Exception as e:
            return cls(
                note=f"Docker API at {where} failed while listing containers ({e}); Docker part skipped"
            )
        finally:
            client.close()
        return cls(containers=conts, available=True, note="", networks=nets)

    def find(self, name_or_id: str) -> Container | None:
        name_or_id = name_or_id.lstrip("/")
        for c in self.containers:
            if c.name == name_or_id or c.id == name_or_id:
                return c
        hits = [c for c in self.containers if len(name_or_id) >= 3 and c.id.startswith(name_or_id)]
        return hits[0] if len(hits) == 1 else None

    def by_ip(self, ip: IPAddress) -> Container | None:
        for c in self.containers:
            if c.running and ip in c.addresses():
                return c
        return None

    def in_docker_subnet(self, ip: IPAddress) -> str | None:
        for name, subnets in self.networks.items():
            if any(ip.version == s.version and ip in s for s in subnets):
                return name
        return None
