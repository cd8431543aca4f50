"""The CNI wire protocol, pure: environment and stdin in, typed requests out; results and errors out.

Owns everything the CNI specification (1.1.0, with 0.4.0 and 1.0.0 accepted) says about the
exchange between a runtime and a plugin, and nothing about the kernel: ``CNI_*`` variables,
the network configuration on stdin, version negotiation, ``runtimeConfig.portMappings``,
``prevResult`` addresses, ``cni.dev/valid-attachments`` and the error JSON. The tag that names
an attachment on its kernel objects is ``portwright.owners.cni_owner``. Keeping it free of I/O
lets every rule of the protocol be unit-tested without root.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..model import ANY4, ANY6, PROTOS, IPAddress, Mapping, Proto
from ..owners import CNI_NAME_RE, CNI_PREFIX, cni_owner

# Spec versions this plugin speaks. 0.4.0 introduced CHECK and prevResult on DEL, below that a
# chained port-mapping plugin cannot work as the issue asks (DEL needs no prevResult, but CHECK
# does), so older configurations are refused with code 1 rather than half-served.
SUPPORTED_VERSIONS: tuple[str, ...] = ("0.4.0", "1.0.0", "1.1.0")
# GC and STATUS arrived in spec 1.1.0; a runtime must not send them with an older cniVersion.
V1_1_COMMANDS = frozenset({"GC", "STATUS"})
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

Command = Literal["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"]

# Well-known error codes (spec section "Error codes"). 1-99 are the spec's.
E_INCOMPATIBLE_VERSION = 1
E_UNSUPPORTED_FIELD = 2
E_UNKNOWN_CONTAINER = 3
E_INVALID_ENV = 4
E_IO = 5
E_DECODE = 6
E_INVALID_CONFIG = 7
E_TRY_AGAIN = 11
E_PLUGIN_NOT_AVAILABLE = 50
# portwright's own codes (the spec reserves 100 and above for plugins).
E_PORT_IN_USE = 100  # a host port is held by another container's mapping or a host socket
E_KERNEL = 101  # nft / sysctl / socket operation failed
E_MISSING_TOOL = 102  # nft binary or kernel feature missing
E_NEED_ROOT = 103  # not running with CAP_NET_ADMIN
E_CHECK_FAILED = 104  # CHECK found entries missing from the kernel
E_INTERNAL = 199  # a bug: an exception portwright did not expect

# The spec's grammar of container IDs (and of network names), kept with the owner tags it shapes.
_CONTAINER_ID_RE = CNI_NAME_RE
_IFNAME_BAD = re.compile(r"[/:\s]")
# Owner tags live in portwright.owners; these two names stay importable here for older callers.
TAG_PREFIX = CNI_PREFIX
owner_tag = cni_owner


class CniError(Exception):
    """An error the plugin reports to the runtime as the spec's error JSON (exit status 1)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def _version_key(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return (-1,)


def negotiate_version(conf: AbcMapping[str, Any]) -> str:
    """The cniVersion to speak for this configuration, or CniError(1).

    Spec 1.1.0 lets a configuration list ``cniVersions`` beside ``cniVersion``; the highest
    version both sides support wins. A plain ``cniVersion`` must be one of ours.
    """
    offered: list[str] = []
    versions = conf.get("cniVersions")
    if versions is not None:
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise CniError(
                E_INVALID_CONFIG, 'cniVersions must be a list of version strings, e.g. ["1.0.0", "1.1.0"]'
            )
        offered.extend(versions)
    single = conf.get("cniVersion")
    if single is not None:
        if not isinstance(single, str):
            raise CniError(E_INVALID_CONFIG, f'cniVersion {single!r} must be a string such as "1.0.0"')
        offered.append(single)
    if not offered:
        raise CniError(E_INVALID_CONFIG, 'network configuration has no cniVersion; add "cniVersion": "1.0.0"')
    common = [v for v in offered if v in SUPPORTED_VERSIONS]
    if not common:
        raise CniError(
            E_INCOMPATIBLE_VERSION,
            f"cniVersion {', '.join(offered)} is not supported by portwright-cni; "
            f"use one of {', '.join(SUPPORTED_VERSIONS)}",
        )
    return max(common, key=_version_key)


def error_version(raw_stdin: bytes | str | None) -> str:
    """Best-effort cniVersion for an error reply (the caller's if readable, else our newest)."""
    try:
        conf = json.loads(raw_stdin or b"{}")
        if isinstance(conf, dict):
            v = conf.get("cniVersion")
            if isinstance(v, str) and v in SUPPORTED_VERSIONS:
                return v
    except (ValueError, TypeError):
        pass
    return SUPPORTED_VERSIONS[-1]


@dataclass(frozen=True, slots=True)
class Env:
    """The ``CNI_*`` environment, validated for one command."""

    command: Command
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: tuple[tuple[str, str], ...] = ()
    path: tuple[str, ...] = ()


def parse_env(environ: AbcMapping[str, str]) -> Env:
    """Validate ``CNI_*`` variables for the command they name; CniError(4) names the bad one."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CniError(E_INVALID_ENV, "CNI_COMMAND is not set; set it to one of " + ", ".join(COMMANDS))
    if command not in COMMANDS:
        raise CniError(
            E_INVALID_ENV, f"CNI_COMMAND {command!r} is unknown; use one of " + ", ".join(COMMANDS)
        )
    cid = environ.get("CNI_CONTAINERID", "")
    netns = environ.get("CNI_NETNS", "")
    ifname = environ.get("CNI_IFNAME", "")
    if command in ("ADD", "DEL", "CHECK"):
        if not cid:
            raise CniError(E_INVALID_ENV, f"CNI_CONTAINERID is not set; {command} needs the container's ID")
        if not _CONTAINER_ID_RE.fullmatch(cid):
            raise CniError(
                E_INVALID_ENV,
                f"CNI_CONTAINERID {cid!r} is invalid; it must start with a letter "
                "or digit and contain only letters, digits, '_', '.' and '-'",
            )
        if not ifname:
            raise CniError(
                E_INVALID_ENV, f"CNI_IFNAME is not set; {command} needs the interface name, e.g. eth0"
            )
        if len(ifname) >= 16 or ifname in (".", "..") or _IFNAME_BAD.search(ifname):
            raise CniError(
                E_INVALID_ENV,
                f"CNI_IFNAME {ifname!r} is invalid; use a Linux interface name "
                "shorter than 16 characters without '/', ':' or spaces",
            )
    if command in ("ADD", "CHECK") and not netns:
        raise CniError(E_INVALID_ENV, f"CNI_NETNS is not set; {command} needs the container's netns path")
    args: list[tuple[str, str]] = []
    for part in environ.get("CNI_ARGS", "").split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CniError(
                E_INVALID_ENV, f'CNI_ARGS item {part!r} is not KEY=VALUE; write e.g. "FOO=BAR;ABC=123"'
            )
        args.append((key, value))
    path = tuple(p for p in environ.get("CNI_PATH", "").split(":") if p)
    return Env(
        command=command,  # type: ignore[arg-type]
        container_id=cid,
        netns=netns,
        ifname=ifname,
        args=tuple(args),
        path=path,
    )


@dataclass(frozen=True, slots=True)
class PortMapping:
    """One entry of ``runtimeConfig.portMappings`` as a runtime sends it."""

    host_port: int
    container_port: int
    proto: Proto
    host_ip: IPAddress | None  # None: every address of every family the container has


@dataclass(frozen=True, slots=True)
class Attachment:
    container_id: str
    ifname: str


@dataclass(frozen=True, slots=True)
class Config:
    """The plugin's configuration: the spec's fields plus portwright's options."""

    cni_version: str
    name: str
    type: str
    reserve_host_port: bool = True
    snat: bool = True
    firewall: str = "forward"  # "host": non-loopback ports are relayed, so INPUT rules apply (issue 16)
    # portwright's state directory for this network (its rewrite pins live under STATE/cni): the
    # configuration, unlike the environment, is the same for every call. Runtimes do not pass
    # their environment on consistently: Podman's DEL from conmon's cleanup has none of it.
    state_dir: str | None = None
    port_mappings: tuple[PortMapping, ...] = ()
    prev_result: dict[str, Any] | None = None
    valid_attachments: tuple[Attachment, ...] | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def _int_port(value: object, what: str, index: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise CniError(
            E_INVALID_CONFIG,
            f"runtimeConfig.portMappings[{index}].{what} {value!r} is not a "
            "port number; use an integer 1-65535",
        )
    return value


def parse_port_mappings(value: object) -> tuple[PortMapping, ...]:
    """Validate ``runtimeConfig.portMappings`` (hostPort, containerPort, protocol, hostIP)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise CniError(
            E_INVALID_CONFIG,
            "runtimeConfig.portMappings must be a list of "
            '{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"} objects',
        )
    out: list[PortMapping] = []
    for i, pm in enumerate(value):
        if not isinstance(pm, dict):
            raise CniError(
                E_INVALID_CONFIG,
                f"runtimeConfig.portMappings[{i}] is not an object; write "
                '{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}',
            )
        host_port = _int_port(pm.get("hostPort"), "hostPort", i)
        container_port = _int_port(pm.get("containerPort"), "containerPort", i)
        proto = pm.get("protocol") or "tcp"
        if not isinstance(proto, str) or proto.lower() not in PROTOS:
            raise CniError(
                E_INVALID_CONFIG,
                f"runtimeConfig.portMappings[{i}].protocol {proto!r} is not supported; use tcp, udp or sctp",
            )
        host_ip_text = pm.get("hostIP") or ""
        host_ip: IPAddress | None = None
        if host_ip_text:
            if not isinstance(host_ip_text, str):
                raise CniError(E_INVALID_CONFIG, f"runtimeConfig.portMappings[{i}].hostIP must be a string")
            try:
                host_ip = ipaddress.ip_address(host_ip_text.strip("[]"))
            except ValueError:
                raise CniError(
                    E_INVALID_CONFIG,
                    f"runtimeConfig.portMappings[{i}].hostIP {host_ip_text!r} is "
                    "not an IP address; use e.g. 127.0.0.1, ::1 or leave it empty for all",
                ) from None
        out.append(PortMapping(host_port, container_port, proto.lower(), host_ip))  # type: ignore[arg-type]
    return tuple(out)


def _choice_opt(conf: AbcMapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = conf.get(key, default)
    if value not in choices:
        raise CniError(E_INVALID_CONFIG, f"option {key} is {value!r}; set it to one of {', '.join(choices)}")
    return str(value)


def _path_opt(conf: AbcMapping[str, Any], key: str) -> str | None:
    value = conf.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise CniError(E_INVALID_CONFIG, f"option {key} is {value!r}; set it to an absolute path")
    return value


def _bool_opt(conf: AbcMapping[str, Any], key: str, default: bool) -> bool:
    value = conf.get(key, default)
    if not isinstance(value, bool):
        raise CniError(E_INVALID_CONFIG, f"option {key} is {value!r}; set it to true or false")
    return value


def parse_valid_attachments(conf: AbcMapping[str, Any]) -> tuple[Attachment, ...] | None:
    """``cni.dev/valid-attachments`` (libcni also sends the early name ``cni.dev/attachments``)."""
    raw = conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments"))
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise CniError(
            E_INVALID_CONFIG,
            'cni.dev/valid-attachments must be a list of {"containerID": "...", "ifname": "..."} objects',
        )
    out = []
    for i, a in enumerate(raw):
        if (
            not isinstance(a, dict)
            or not isinstance(a.get("containerID"), str)
            or not isinstance(a.get("ifname"), str)
        ):
            raise CniError(
                E_INVALID_CONFIG, f"cni.dev/valid-attachments[{i}] needs string fields containerID and ifname"
            )
        out.append(Attachment(a["containerID"], a["ifname"]))
    return tuple(out)


def parse_config(raw_stdin: bytes | str, command: str) -> Config:
    """Decode and validate the network configuration on stdin for ``command``."""
    try:
        conf = json.loads(raw_stdin)
    except (ValueError, TypeError) as e:
        raise CniError(
            E_DECODE,
            f"network configuration on stdin is not valid JSON ({e}); "
            "pass the plugin's configuration object as JSON",
        ) from None
    if not isinstance(conf, dict):
        raise CniError(
            E_DECODE, f"network configuration on stdin must be a JSON object, got {type(conf).__name__}"
        )
    version = negotiate_version(conf)
    if command in V1_1_COMMANDS and _version_key(version) < (1, 1, 0):
        raise CniError(
            E_INCOMPATIBLE_VERSION,
            f"{command} needs cniVersion 1.1.0 but the configuration "
            f'says {version}; set "cniVersion": "1.1.0"',
        )
    name = conf.get("name")
    if command != "VERSION" and (not isinstance(name, str) or not name):
        raise CniError(E_INVALID_CONFIG, 'network configuration has no "name"; add the network\'s name')
    typ = conf.get("type", "")
    if not isinstance(typ, str):
        raise CniError(E_INVALID_CONFIG, f'"type" {typ!r} must be a string, e.g. "portwright-cni"')
    runtime = conf.get("runtimeConfig") or {}
    if not isinstance(runtime, dict):
        raise CniError(E_INVALID_CONFIG, "runtimeConfig must be an object")
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(E_INVALID_CONFIG, "prevResult must be an object (the previous plugin's result)")
    if command in ("ADD", "CHECK") and prev is None:
        raise CniError(
            E_INVALID_CONFIG,
            f"{command} got no prevResult; portwright-cni is a chained plugin: "
            "list it after an interface plugin such as bridge in a conflist",
        )
    return Config(
        cni_version=version,
        name=str(name or ""),
        type=typ,
        reserve_host_port=_bool_opt(conf, "reserveHostPort", True),
        snat=_bool_opt(conf, "snat", True),
        firewall=_choice_opt(conf, "firewall", ("forward", "host"), "forward"),
        state_dir=_path_opt(conf, "stateDir"),
        port_mappings=parse_port_mappings(runtime.get("portMappings")),
        prev_result=prev,
        valid_attachments=parse_valid_attachments(conf) if command == "GC" else None,
        raw=conf,
    )


@dataclass(frozen=True, slots=True)
class ContainerAddrs:
    ip4: ipaddress.IPv4Address | None
    ip6: ipaddress.IPv6Address | None


def _sandbox_ips(prev: AbcMapping[str, Any] | None) -> Iterator[dict[str, Any]]:
    """The ``ips`` entries of ``prevResult`` that belong to the container: those whose interface
    is inside the sandbox, or that name no interface at all."""
    if not prev:
        return
    interfaces = prev.get("interfaces") or []
    for entry in prev.get("ips") or []:
        if not isinstance(entry, dict):
            continue
        idx = entry.get("interface")
        if isinstance(idx, int) and isinstance(interfaces, list) and 0 <= idx < len(interfaces):
            itf = interfaces[idx]
            if not isinstance(itf, dict) or not itf.get("sandbox"):
                continue
        yield entry


def container_addresses(prev: AbcMapping[str, Any] | None) -> ContainerAddrs:
    """The container's first IPv4 and IPv6 address from ``prevResult``.

    An address counts when its ``interface`` index names an interface with a ``sandbox``
    (the container side), or when it names no interface at all. 0.4.0 results also carry
    ``version``; 1.0.0 dropped it, so the family comes from the address itself.
    """
    ip4: ipaddress.IPv4Address | None = None
    ip6: ipaddress.IPv6Address | None = None
    for entry in _sandbox_ips(prev):
        try:
            addr = ipaddress.ip_interface(str(entry.get("address", ""))).ip
        except ValueError:
            raise CniError(
                E_INVALID_CONFIG,
                f"prevResult address {entry.get('address')!r} is not CIDR; "
                "the previous plugin's result is malformed",
            ) from None
        if isinstance(addr, ipaddress.IPv4Address) and ip4 is None:
            ip4 = addr
        elif isinstance(addr, ipaddress.IPv6Address) and ip6 is None:
            ip6 = addr
    return ContainerAddrs(ip4, ip6)


def container_subnets(
    prev: AbcMapping[str, Any] | None,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The on-link subnets of the container's addresses in ``prevResult`` (for hairpin SNAT)."""
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in _sandbox_ips(prev):
        try:
            net = ipaddress.ip_interface(str(entry.get("address", ""))).network
        except ValueError:
            continue
        if net not in out:
            out.append(net)
    return tuple(out)


def host_interfaces(prev: AbcMapping[str, Any] | None) -> tuple[str, ...]:
    """Names of host-side interfaces in ``prevResult`` (no ``sandbox``), e.g. the bridge."""
    if not prev:
        return ()
    out = []
    for itf in prev.get("interfaces") or []:
        if isinstance(itf, dict) and not itf.get("sandbox") and isinstance(itf.get("name"), str):
            out.append(itf["name"])
    return tuple(out)


def to_mappings(pms: tuple[PortMapping, ...], addrs: ContainerAddrs) -> list[Mapping]:
    """Expand runtime port mappings into portwright Mappings, one per address family.

    An empty hostIP publishes on every family the container has an address in. An explicit
    hostIP uses the container address of the same family; ``::1`` may fall back to the
    container's IPv4 address (served by the relay, since no kernel can DNAT ::1).
    """
    out: list[Mapping] = []
    for pm in pms:
        if pm.host_ip is None:
            pairs: list[tuple[IPAddress, IPAddress | None]] = [(ANY4, addrs.ip4), (ANY6, addrs.ip6)]
            chosen = [(h, c) for h, c in pairs if c is not None]
            if not chosen:
                raise CniError(
                    E_INVALID_CONFIG,
                    "prevResult has no container address to publish "
                    f"{pm.host_port}/{pm.proto} to; chain portwright-cni after a plugin "
                    "that assigns one (bridge with host-local IPAM)",
                )
        else:
            same = addrs.ip4 if pm.host_ip.version == 4 else addrs.ip6
            if same is None and pm.host_ip.version == 6 and pm.host_ip.is_loopback:
                same = addrs.ip4
            if same is None:
                raise CniError(
                    E_INVALID_CONFIG,
                    f"hostIP {pm.host_ip} for {pm.host_port}/{pm.proto} needs "
                    f"an IPv{pm.host_ip.version} container address but prevResult has none; "
                    "remove hostIP or give the container that family",
                )
            chosen = [(pm.host_ip, same)]
        for host_ip, cip in chosen:
            assert cip is not None
            out.append(
                Mapping(
                    proto=pm.proto,
                    host_ip=host_ip,
                    host_port=pm.host_port,
                    container_ip=cip,
                    container_port=pm.container_port,
                )
            )
    return out


def passthrough_result(conf: Config) -> dict[str, Any]:
    """ADD's result: the previous plugin's result, unchanged, in the configuration's version."""
    result = dict(conf.prev_result or {})
    result["cniVersion"] = conf.cni_version
    return result


def version_result(cni_version: str) -> dict[str, Any]:
    return {"cniVersion": cni_version, "supportedVersions": list(SUPPORTED_VERSIONS)}
