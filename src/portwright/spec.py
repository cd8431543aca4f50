"""Parsing of a ``run`` request (Docker's ``-p``, ``--expose``, ``-e``, names) into frozen dataclasses.

The CLI turns its arguments into one ``SandboxSpec`` here, once; that spec is what the engine
works from and what state stores (versioned JSON, read back into the same types).
Pure: no I/O. Every malformed input raises ``BadInput`` whose message names the offending
text and says what a valid one looks like. Grammar (Docker's)::

    -p [ip:][hostPort[-end]:]containerPort[-end][/tcp|udp|sctp]
    ip is a dotted IPv4 address or a bracketed IPv6 one: [::1]:8080:80, [::]::80
    --expose port[-end][/proto]
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .caps_model import Privileges
from .errors import BadInput
from .model import PROTOS, PUBLISH_MODES, IPAddress, Proto

#: --firewall values: "forward" (DNAT through FORWARD, the default) or "host" (obey INPUT). Issue 16.
FIREWALL_MODES: tuple[str, ...] = ("forward", "host")

PORT_SYNTAX = "[ip:][hostPort[-end]:]containerPort[-end][/tcp|udp|sctp]"
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


@dataclass(frozen=True, slots=True)
class PortRange:
    start: int
    end: int  # inclusive; == start for a single port

    def __post_init__(self) -> None:
        if not (1 <= self.start <= 65535 and 1 <= self.end <= 65535):
            raise BadInput(f"port range {self} is outside 1-65535")
        if self.end < self.start:
            raise BadInput(f"port range {self.start}-{self.end} is reversed; write it low-high")

    def __len__(self) -> int:
        return self.end - self.start + 1

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(range(self.start, self.end + 1))

    def __str__(self) -> str:
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One ``-p`` argument, validated. ``host`` None means "any free port"."""

    host_ip: IPAddress | None
    host: PortRange | None
    container: PortRange
    proto: Proto
    text: str = ""

    def __post_init__(self) -> None:
        if self.host is not None and len(self.host) != len(self.container) and len(self.container) != 1:
            raise BadInput(
                f"-p {self.text}: host range {self.host} has {len(self.host)} ports but container "
                f"range {self.container} has {len(self.container)}; make the lengths equal, or give "
                "a single container port to pick any free host port in the range"
            )

    def requests(self) -> list[tuple[int, tuple[int, ...]]]:
        """(container_port, candidate host ports) pairs; an empty candidate tuple = ephemeral."""
        if self.host is None:
            return [(c, ()) for c in self.container]
        if len(self.host) == len(self.container):
            return [(c, (h,)) for c, h in zip(self.container, self.host, strict=True)]
        return [(self.container.start, tuple(self.host))]


@dataclass(frozen=True, slots=True)
class ExposeSpec:
    ports: PortRange
    proto: Proto


_EXPOSE_SYNTAX = "port[-end][/tcp|udp|sctp]"


def _port(text: str, whole: str, what: str, flag: str = "-p") -> int:
    if not text.isdigit():
        syntax = PORT_SYNTAX if flag == "-p" else _EXPOSE_SYNTAX
        raise BadInput(f"{flag} {whole}: {what} {text!r} is not a number; expected {syntax}")
    n = int(text)
    if not 1 <= n <= 65535:
        raise BadInput(f"{flag} {whole}: {what} {n} is out of range; ports are 1-65535")
    return n


def _range(text: str, whole: str, what: str, flag: str = "-p") -> PortRange:
    lo, sep, hi = text.partition("-")
    a = _port(lo, whole, what, flag)
    b = _port(hi, whole, what, flag) if sep else a
    if b < a:
        raise BadInput(f"{flag} {whole}: {what} range {a}-{b} is reversed; write it low-high")
    return PortRange(a, b)


def _proto(text: str, whole: str, flag: str = "-p") -> Proto:
    p = text.lower()
    if p not in PROTOS:
        raise BadInput(f"{flag} {whole}: unknown protocol {text!r}; use tcp, udp or sctp")
    return p


def parse_ip(text: str, whole: str) -> IPAddress:
    raw = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        raise BadInput(f"-p {whole}: {text!r} is not an IP address; use e.g. 127.0.0.1 or [::1]") from None
    if ip.version == 6 and not text.startswith("["):
        raise BadInput(f"-p {whole}: write IPv6 addresses in brackets, e.g. [{raw}]:8080:80")
    if ip.is_multicast:
        raise BadInput(f"-p {whole}: {ip} is a multicast address; publish on a unicast host address")
    return ip


def parse_publish(text: str) -> PortSpec:
    """Parse one ``-p`` value (Docker syntax)."""
    whole = text
    if not text or text.strip() != text:
        raise BadInput(f"-p {text!r}: empty or padded; expected {PORT_SYNTAX}")
    body, slash, proto_text = text.rpartition("/") if "/" in text.split("]")[-1] else (text, "", "")
    proto = _proto(proto_text, whole) if slash else "tcp"
    host_ip: IPAddress | None = None
    if body.startswith("["):
        close = body.find("]")
        if close < 0 or body[close + 1 : close + 2] != ":":
            raise BadInput(f"-p {whole}: unterminated IPv6 address; write it as [::1]:8080:80")
        host_ip = parse_ip(body[: close + 1], whole)
        rest = body[close + 2 :].split(":")
        if len(rest) != 2:
            raise BadInput(
                f"-p {whole}: after the address give hostPort:containerPort (hostPort may be empty)"
            )
        host_part, cont_part = rest
    else:
        parts = body.split(":")
        if len(parts) == 1:
            host_part, cont_part = "", parts[0]
        elif len(parts) == 2:
            host_part, cont_part = parts
        elif len(parts) == 3:
            host_ip = parse_ip(parts[0], whole)
            host_part, cont_part = parts[1], parts[2]
        else:
            raise BadInput(f"-p {whole}: too many ':'; expected {PORT_SYNTAX} (IPv6 in brackets)")
    if not cont_part:
        raise BadInput(f"-p {whole}: no container port; expected {PORT_SYNTAX}")
    container = _range(cont_part, whole, "container port")
    # Host port 0 is "any free port", as Docker reads it (-p 0:80, -p 127.0.0.1:0:80).
    host = _range(host_part, whole, "host port") if host_part and host_part != "0" else None
    return PortSpec(host_ip=host_ip, host=host, container=container, proto=proto, text=whole)


def parse_expose(text: str) -> ExposeSpec:
    """Parse one ``--expose`` value: ``port[-end][/proto]``."""
    body, slash, proto_text = text.partition("/")
    proto = _proto(proto_text, text, "--expose") if slash else "tcp"
    if not body:
        raise BadInput(f"--expose {text!r}: no port; expected {_EXPOSE_SYNTAX}")
    return ExposeSpec(ports=_range(body, text, "exposed port", "--expose"), proto=proto)


def parse_env(text: str, host_env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """One ``-e`` value. ``KEY=VALUE`` sets it; a bare ``KEY`` copies ``host_env[KEY]`` as Docker
    does, or is ``None`` (left unset) when the host has no KEY. Without ``host_env`` (a stored spec
    of the first release) a bare ``KEY`` is empty, as that release ran it."""
    key, eq, value = text.partition("=")
    if not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise BadInput(f"-e {text!r}: expected KEY=VALUE (or KEY, to copy the host's) with a shell-style KEY")
    if eq:
        return key, value
    if host_env is None:
        return key, ""
    return (key, host_env[key]) if key in host_env else None


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):  # match() with $ would accept a trailing newline
        raise BadInput(
            f"name {name!r} is invalid; use 1-63 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return name


_ALIAS_RE = re.compile(
    r"^(?=.{1,253}$)[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?(\.[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?)*$"
)


def check_alias(alias: str) -> str:
    """A ``--network-alias``: a DNS name (labels of letters, digits, '-', '_'; 63 characters each)."""
    if not _ALIAS_RE.fullmatch(alias) or alias.lower().endswith(".arpa"):
        raise BadInput(
            f"--network-alias {alias!r} is not a valid DNS name; use labels of letters, digits, '-' "
            "and '_' (1-63 characters each) joined by '.', e.g. db or db.internal"
        )
    return alias


# ------------------------------------------------------------------------------------------------
# The whole request
# ------------------------------------------------------------------------------------------------

SPEC_VERSION = 1  # the "version" of a stored SandboxSpec; from_json reads this and older forms
DEFAULT_NETWORK = "pw0"
UDP_TIMEOUT_RANGE = (1.0, 86400.0)  # seconds a relayed UDP flow may stay idle
DEFAULT_UDP_TIMEOUT = 90.0
PROXY_CONNECT_TIMEOUT_RANGE = (0.1, 3600.0)  # seconds a proxied backend connect may take
DEFAULT_PROXY_CONNECT_TIMEOUT = 10.0
MAX_PROXY_WORKERS = 64  # --proxy-workers 0 (the default) means one per core, at most 4


def _range_json(r: PortRange | None) -> list[int] | None:
    return None if r is None else [r.start, r.end]


def _range_from(v: Any) -> PortRange | None:
    return None if v is None else PortRange(int(v[0]), int(v[1]))


def port_spec_json(p: PortSpec) -> dict[str, Any]:
    return {
        "host_ip": str(p.host_ip) if p.host_ip is not None else None,
        "host": _range_json(p.host),
        "container": _range_json(p.container),
        "proto": p.proto,
        "text": p.text,
    }


def port_spec_from(d: dict[str, Any]) -> PortSpec:
    container = _range_from(d["container"])
    assert container is not None
    return PortSpec(
        host_ip=ipaddress.ip_address(d["host_ip"]) if d.get("host_ip") else None,
        host=_range_from(d.get("host")),
        container=container,
        proto=d["proto"],
        text=str(d.get("text", "")),
    )


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Everything ``run`` was asked for, validated (``BadInput`` on any bad field)."""

    cmd: tuple[str, ...]
    name: str | None = None
    network: str = DEFAULT_NETWORK  # a network name, "host" or "none"
    publish: tuple[PortSpec, ...] = ()
    publish_all: bool = False
    expose: tuple[ExposeSpec, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    publish_mode: str = "nat"
    detach: bool = False
    proxy_protocol: bool = False
    udp_timeout: float = 90.0
    proxy_workers: int = 0  # 0: one relay worker process per core, at most 4 (proxy/workers.py)
    proxy_connect_timeout: float = DEFAULT_PROXY_CONNECT_TIMEOUT
    remove: bool = False  # --rm: forget a detached sandbox when CMD exits
    cwd: str = "/"  # CMD's working directory (the user's, when started from the CLI)
    aliases: tuple[str, ...] = ()  # --network-alias: more names it answers to on its network (dns/)
    privileges: Privileges = Privileges()  # capabilities, --user, --privileged, --allow-spoof
    # --firewall: "forward" (published ports are DNATed through FORWARD, the host's INPUT rules do
    # not apply) or "host" (the relay listens on the host port, so ufw/firewalld/nft INPUT rules
    # decide as for a host service; publish/firewallhost.py). Issue 16.
    firewall: str = "forward"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # unknown keys of newer versions

    def __post_init__(self) -> None:
        if not self.cmd:
            raise BadInput("no command given; usage: portwright run [OPTIONS] -- CMD [ARG...]")
        if self.name is not None:
            check_name(self.name)
        lo, hi = UDP_TIMEOUT_RANGE
        if not lo <= self.udp_timeout <= hi:
            raise BadInput(f"--udp-timeout {self.udp_timeout:g}: give {lo:g} to {hi:g} seconds")
        if not 0 <= self.proxy_workers <= MAX_PROXY_WORKERS:
            raise BadInput(
                f"--proxy-workers {self.proxy_workers}: give 1 to {MAX_PROXY_WORKERS} (or 0: one per core, at most 4)"
            )
        lo, hi = PROXY_CONNECT_TIMEOUT_RANGE
        if not lo <= self.proxy_connect_timeout <= hi:
            raise BadInput(
                f"--proxy-connect-timeout {self.proxy_connect_timeout:g}: give {lo:g} to {hi:g} seconds"
            )
        if self.firewall not in FIREWALL_MODES:
            raise BadInput(f"--firewall {self.firewall!r} is unknown; use one of {', '.join(FIREWALL_MODES)}")
        if self.publish_mode not in PUBLISH_MODES:
            raise BadInput(
                f"--publish-mode {self.publish_mode!r} is unknown; use one of {', '.join(PUBLISH_MODES)}"
            )
        # -p/-P with --network host is accepted here: the host-remap publisher rewrites CMD's
        # bind() in its cgroup, and refuses (naming why) where cgroup2 or BPF is missing.
        if self.network == "none" and (self.publish or self.publish_all):
            raise BadInput(
                "--network none has no interface to publish on; drop -p/-P or use a bridge network"
            )
        if self.network not in ("host", "none"):
            check_name(self.network)
        for alias in self.aliases:
            check_alias(alias)

    def refuse_ignored(self, *, udp_timeout_given: bool) -> None:
        """Refuse flags a new request gives that would be silently ignored (a stored spec of an
        earlier version is read as it is, without this check)."""
        if self.privileges.allow_spoof and not self.bridged:
            raise BadInput(
                f"--allow-spoof applies only to a bridge network (--network {self.network} has no "
                "bridge port to check); drop it"
            )
        if not self.bridged and self.publish_mode == "proxy":
            raise BadInput(
                f"--publish-mode proxy does not apply with --network {self.network} (nothing is "
                "published there); drop it or use a bridge network"
            )
        if self.aliases and not self.bridged:
            raise BadInput(
                f"--network-alias applies only to a bridge network, not --network {self.network}; "
                "drop it or use a bridge network"
            )
        if (self.publish_mode == "proxy" or self.firewall == "host") and self.bridged:
            return
        if self.proxy_protocol:
            raise BadInput(
                "--proxy-protocol applies only to --publish-mode proxy on a bridge network; "
                "add --publish-mode proxy or drop it"
            )
        if self.proxy_workers or self.proxy_connect_timeout != DEFAULT_PROXY_CONNECT_TIMEOUT:
            raise BadInput(
                "--proxy-workers and --proxy-connect-timeout apply only to --publish-mode proxy on a "
                "bridge network; add --publish-mode proxy or drop them"
            )
        if udp_timeout_given:
            raise BadInput(
                f"--udp-timeout {self.udp_timeout:g} applies only to --publish-mode proxy on a bridge "
                "network; add --publish-mode proxy or drop it"
            )

    @property
    def bridged(self) -> bool:
        return self.network not in ("host", "none")

    def port_specs(self) -> list[PortSpec]:
        """``-p`` requests, then ``-P``'s: every exposed port on a free ephemeral host port."""
        out = list(self.publish)
        if self.publish_all:
            out += [
                PortSpec(
                    host_ip=None, host=None, container=e.ports, proto=e.proto, text=f"{e.ports}/{e.proto}"
                )
                for e in self.expose
            ]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            "version": SPEC_VERSION,
            "cmd": list(self.cmd),
            "name": self.name,
            "network": self.network,
            "publish": [port_spec_json(p) for p in self.publish],
            "publish_all": self.publish_all,
            "expose": [{"ports": _range_json(e.ports), "proto": e.proto} for e in self.expose],
            "env": [list(kv) for kv in self.env],
            "publish_mode": self.publish_mode,
            "detach": self.detach,
            "proxy_protocol": self.proxy_protocol,
            "udp_timeout": self.udp_timeout,
            "proxy_workers": self.proxy_workers,
            "proxy_connect_timeout": self.proxy_connect_timeout,
            "remove": self.remove,
            "cwd": self.cwd,
            **({"aliases": list(self.aliases)} if self.aliases else {}),
            "privileges": self.privileges.to_json(),
            **({"firewall": self.firewall} if self.firewall != "forward" else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SandboxSpec:
        """Read a stored spec: this version's form, or the untyped one of the first release
        (``-p``/``--expose``/``-e`` kept as the user's text), which is parsed here."""
        if "version" not in d:
            return parse_sandbox_spec(**{k: d[k] for k in _LEGACY_KEYS if k in d}, strict=False)
        known = {"version", *_FIELDS}
        expose = tuple(
            ExposeSpec(ports=_range_from(e["ports"]), proto=e["proto"])  # type: ignore[arg-type]
            for e in d.get("expose", [])
        )
        return cls(
            cmd=tuple(d["cmd"]),
            name=d.get("name"),
            network=d.get("network", DEFAULT_NETWORK),
            publish=tuple(port_spec_from(p) for p in d.get("publish", [])),
            publish_all=bool(d.get("publish_all")),
            expose=expose,
            env=tuple((str(k), str(v)) for k, v in d.get("env", [])),
            publish_mode=d.get("publish_mode", "nat"),
            detach=bool(d.get("detach")),
            proxy_protocol=bool(d.get("proxy_protocol")),
            udp_timeout=float(d.get("udp_timeout", 90.0)),
            proxy_workers=int(d.get("proxy_workers", 0)),
            proxy_connect_timeout=float(d.get("proxy_connect_timeout", DEFAULT_PROXY_CONNECT_TIMEOUT)),
            remove=bool(d.get("remove")),
            cwd=d.get("cwd", "/"),
            aliases=tuple(str(a) for a in d.get("aliases", [])),
            privileges=Privileges.from_json(d.get("privileges")),
            firewall=str(d.get("firewall", "forward")),
            extra={k: v for k, v in d.items() if k not in known},
        )


_FIELDS = (
    "cmd",
    "name",
    "network",
    "publish",
    "publish_all",
    "expose",
    "env",
    "publish_mode",
    "detach",
    "proxy_protocol",
    "udp_timeout",
    "proxy_workers",
    "proxy_connect_timeout",
    "remove",
    "cwd",
    "aliases",
    "privileges",
    "firewall",
)
_LEGACY_KEYS = _FIELDS


def parse_sandbox_spec(
    cmd: list[str] | tuple[str, ...],
    *,
    name: str | None = None,
    network: str = DEFAULT_NETWORK,
    publish: list[str] | tuple[str, ...] = (),
    publish_all: bool = False,
    expose: list[str] | tuple[str, ...] = (),
    env: list[str] | tuple[str, ...] = (),
    publish_mode: str = "nat",
    detach: bool = False,
    proxy_protocol: bool = False,
    udp_timeout: float | None = None,
    proxy_workers: int = 0,
    proxy_connect_timeout: float = DEFAULT_PROXY_CONNECT_TIMEOUT,
    remove: bool = False,
    cwd: str = "/",
    aliases: list[str] | tuple[str, ...] = (),
    privileges: Privileges | None = None,
    host_env: Mapping[str, str] | None = None,
    strict: bool = True,
    firewall: str = "forward",
) -> SandboxSpec:
    """The CLI's words, parsed once into a SandboxSpec (each flag's text named in its error).
    ``host_env`` is the caller's environment, which a bare ``-e KEY`` copies from;
    ``udp_timeout`` None means not given (90 s). ``strict`` refuses flags that would be ignored
    (``SandboxSpec.refuse_ignored``); reading a stored spec of the first release passes False."""
    pairs = (parse_env(e, host_env) for e in env)
    spec = SandboxSpec(
        cmd=tuple(cmd),
        name=name,
        network=network,
        publish=tuple(parse_publish(p) for p in publish),
        publish_all=publish_all,
        expose=tuple(parse_expose(e) for e in expose),
        env=tuple(kv for kv in pairs if kv is not None),
        publish_mode=publish_mode,
        detach=detach,
        proxy_protocol=proxy_protocol,
        udp_timeout=DEFAULT_UDP_TIMEOUT if udp_timeout is None else udp_timeout,
        proxy_workers=proxy_workers,
        proxy_connect_timeout=proxy_connect_timeout,
        remove=remove,
        cwd=cwd,
        aliases=tuple(dict.fromkeys(aliases)),
        privileges=privileges or Privileges(),
        firewall=firewall,
    )
    if strict:
        spec.refuse_ignored(udp_timeout_given=udp_timeout is not None)
    return spec
