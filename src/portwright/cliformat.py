"""What the CLI prints about sandboxes, as Docker prints it: ``inspect`` documents (PascalCase,
``Created`` in RFC 3339, ``NetworkSettings.Networks`` and ``Ports`` in Docker's shapes), ``ps``
rows (``docker ps --format json``'s flat objects), the PORTS column with ranges compacted,
"3 minutes ago" as Docker's go-units says it, ``ps --filter``, and ``--format`` templates
(``table`` and Go templates through ``gotemplate``). Pure: records in, text and dicts out.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import gotemplate
from .errors import BadInput
from .model import Mapping, Network, address_text
from .state import SandboxRecord

KERNEL_PATH_MODES = ("nat", "ebpf")  # publishers that serve [::]:P in the kernel and relay only ::1
COMMAND_WIDTH = 20  # docker ps truncates COMMAND to this many characters (then "…")
ZERO_TIME = "0001-01-01T00:00:00Z"  # Docker's StartedAt/FinishedAt for "never" (Go's zero time.Time)


def rfc3339(ts: float) -> str:
    """``2026-11-30T05:57:01.123456Z``: Docker's ``Created``."""
    d = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return d.isoformat(timespec="microseconds").replace("+00:00", "Z")


def human_duration(seconds: float) -> str:
    """Docker's words for a duration (go-units ``HumanDuration``): "Less than a second",
    "1 second", "About a minute", "3 minutes", "About an hour", "5 hours", "3 days" ..."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    for limit, div, unit in (
        (24 * 14, 24, "days"),
        (24 * 60, 24 * 7, "weeks"),
        (24 * 730, 24 * 30, "months"),
    ):
        if hours < limit:
            return f"{hours // div} {unit}"
    return f"{hours // (24 * 365)} years"


def ago(ts: float, now: float) -> str:
    return human_duration(max(0.0, now - ts)) + " ago"


def status_text(rec: SandboxRecord, now: float) -> str:
    """Docker's STATUS column: ``Up 5 minutes``, ``Exited (3) 2 seconds ago``, ``Creating``."""
    if rec.status == "exited":
        code = rec.exit_code if rec.exit_code is not None else "?"
        return f"Exited ({code})" + (f" {ago(rec.finished, now)}" if rec.finished is not None else "")
    if rec.status == "running":  # as Docker: since CMD last started (`start` keeps Created)
        return "Up " + human_duration(max(0.0, now - (rec.started or rec.created)))
    return rec.status.capitalize()


def _binding_host(m: Mapping) -> str:
    return f"[{m.host_ip}]" if m.host_ip.version == 6 else str(m.host_ip)


def _span(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def ports_column(mappings: Sequence[Mapping]) -> str:
    """The PORTS column: consecutive mappings of one address and protocol whose host and
    container ports both step by one are one range (``0.0.0.0:8000-8099->8000-8099/tcp``)."""
    # Keys are built once (address_text formats each address once): 20,000 mappings at 10,000
    # ports (#11). The index breaks ties between mappings that differ only in their target.
    uniq = set(mappings)
    keyed = sorted(
        ((m.host_ip.version, address_text(m.host_ip), m.proto, m.host_port, m.container_port), i, m)
        for i, m in enumerate(uniq)
    )
    runs: list[list[Mapping]] = []
    last: tuple[Any, ...] | None = None
    for key, _, m in keyed:
        if last is not None and last[1:3] == key[1:3] and (key[3], key[4]) == (last[3] + 1, last[4] + 1):
            runs[-1].append(m)
        else:
            runs.append([m])
        last = key
    return ", ".join(
        f"{_binding_host(r[0])}:{_span(r[0].host_port, r[-1].host_port)}"
        f"->{_span(r[0].container_port, r[-1].container_port)}/{r[0].proto}"
        for r in runs
    )


def docker_ports(mappings: Iterable[Mapping]) -> dict[str, list[dict[str, str]]]:
    """``NetworkSettings.Ports`` in Docker's shape: ``{"80/tcp": [{"HostIp": .., "HostPort": ..}]}``."""
    out: dict[str, list[dict[str, str]]] = {}
    for m in mappings:
        out.setdefault(f"{m.container_port}/{m.proto}", []).append(
            {"HostIp": str(m.host_ip), "HostPort": str(m.host_port)}
        )
    return out


class PortMap(dict[str, list[dict[str, str]]]):
    """Docker's port map for ``port --format``, plus ``fields`` a template reaches by name but
    that ``range`` and ``json`` never see: ``{{.PublishMode}}`` works, while a script ranging over
    the ports (``{{range $p, $c := .}}``) gets exactly Docker's keys (issue 11)."""

    def __init__(self, ports: dict[str, list[dict[str, str]]], **fields: str) -> None:
        super().__init__(ports)
        self.fields = fields


def mapping_json(m: Mapping) -> dict[str, Any]:
    return {
        "Proto": m.proto,
        "HostIp": str(m.host_ip),
        "HostPort": m.host_port,
        "ContainerIp": str(m.container_ip),
        "ContainerPort": m.container_port,
    }


def network_json(n: Network) -> dict[str, Any]:
    return {
        "Name": n.name,
        "Driver": "bridge",
        "Bridge": n.bridge,
        "Internal": n.internal,
        "EnableIPv6": n.subnet6 is not None,
        "IPAM": {
            "Config": [{"Subnet": str(n.subnet4), "Gateway": str(n.gateway4)}]
            + ([{"Subnet": str(n.subnet6), "Gateway": str(n.gateway6)}] if n.subnet6 else [])
        },
    }


def network_settings(rec: SandboxRecord, net: Network | None) -> dict[str, Any]:
    sb = rec.sandbox
    endpoint = {
        "IPAddress": str(sb.ip4) if sb.ip4 else "",
        "GlobalIPv6Address": str(sb.ip6) if sb.ip6 else "",
        "Gateway": str(net.gateway4) if net and sb.ip4 else "",
        "IPv6Gateway": str(net.gateway6) if net and net.gateway6 and sb.ip6 else "",
        "IPPrefixLen": net.subnet4.prefixlen if net else 0,
        "GlobalIPv6PrefixLen": net.subnet6.prefixlen if net and net.subnet6 else 0,
        "MacAddress": sb.mac or "",
    }
    return {
        "Network": sb.network,
        "SandboxKey": sb.netns,
        "HostVeth": sb.veth,
        **endpoint,
        "Bridge": net.bridge if net else "",
        "Networks": {sb.network: endpoint} if net else {},
        "Ports": docker_ports(sb.mappings),
        "Mappings": [mapping_json(m) for m in sb.mappings],
    }


def inspect_doc(rec: SandboxRecord, net: Network | None) -> dict[str, Any]:
    """One sandbox as ``portwright inspect`` shows it (an element of the printed array)."""
    sb = rec.sandbox
    return {
        "Id": sb.id,
        "Name": sb.name,
        "Created": rfc3339(rec.created),
        "PublishMode": sb.publish_mode,
        "Config": {
            "Cmd": list(rec.cmd),
            "Env": [f"{k}={v}" for k, v in rec.spec.env],
            "ExposedPorts": {f"{e.ports}/{e.proto}": {} for e in rec.spec.expose},
        },
        "State": {
            "Status": rec.status,
            "Running": rec.status == "running",
            "Pid": rec.cmd_pid or 0,
            "SupervisorPid": rec.supervisor_pid or 0,
            "ExitCode": rec.exit_code if rec.exit_code is not None else 0,
            "StartedAt": rfc3339(rec.started) if rec.started is not None else ZERO_TIME,
            "FinishedAt": rfc3339(rec.finished) if rec.finished is not None else ZERO_TIME,
        },
        "LogPath": rec.log_path or "",
        "NetworkSettings": network_settings(rec, net),
        **({"HostRemap": host_remap(rec)} if sb.publish_mode == "host-remap" else {}),
    }


def host_remap(rec: SandboxRecord) -> dict[str, Any]:
    """What a host-remap sandbox's cgroup BPF programs do (issue 12): each bind() remapped, and
    what else CMD may bind."""
    exposed = [f"{e.ports}/{e.proto}" for e in rec.spec.expose]
    return {
        "Remapped": list(
            dict.fromkeys(
                f"bound as :{m.container_port}/{m.proto}, remapped at bind() to {m.host_binding()}"
                for m in rec.sandbox.mappings
            )
        ),
        "AlsoBindable": ["0", "the ephemeral range (net.ipv4.ip_local_port_range)", *exposed],
    }


def command_text(cmd: Sequence[str], no_trunc: bool) -> str:
    """Docker's COMMAND: the command line in double quotes, cut to 20 characters with "…"."""
    text = shlex.join(cmd)
    if not no_trunc and len(text) > COMMAND_WIDTH:
        text = text[: COMMAND_WIDTH - 1] + "…"
    return f'"{text}"'


def ps_row(rec: SandboxRecord, now: float, no_trunc: bool) -> dict[str, Any]:
    """One ``ps`` row as ``docker ps --format json`` prints it (the fields ``--format`` reads)."""
    created = datetime.datetime.fromtimestamp(rec.created, datetime.UTC)
    return {
        "ID": rec.id,
        "Names": rec.name,
        "Command": command_text(rec.cmd, no_trunc),
        "CreatedAt": created.strftime("%Y-%m-%d %H:%M:%S +0000 UTC"),
        "RunningFor": ago(rec.created, now),
        "State": rec.status,
        "Status": status_text(rec, now),
        "Ports": ports_column(rec.sandbox.mappings),
        "Networks": rec.sandbox.network,
        "PublishMode": rec.sandbox.publish_mode,
    }


PS_COLUMNS = ("ID", "Command", "RunningFor", "Status", "Ports", "Names")
HEADERS = {
    "ID": "SANDBOX ID",
    "Names": "NAMES",
    "Command": "COMMAND",
    "CreatedAt": "CREATED AT",
    "RunningFor": "CREATED",
    "State": "STATE",
    "Status": "STATUS",
    "Ports": "PORTS",
    "Networks": "NETWORKS",
    "PublishMode": "PUBLISH MODE",
}


# ---------------------------------------------------------------------- ps --filter
FILTER_KEYS = ("name", "id", "status", "publish", "network")
STATUSES = ("creating", "running", "exited", "removing")


def parse_filters(items: Sequence[str]) -> dict[str, list[str]]:
    """``--filter KEY=VALUE`` flags: the same key OR'd, different keys AND'd, as Docker does."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or key not in FILTER_KEYS:
            raise BadInput(f"--filter {item!r}: expected KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}")
        if key == "status" and value not in STATUSES:
            raise BadInput(f"--filter {item!r}: status is one of {', '.join(STATUSES)}")
        if key == "publish":
            _port_range(value, item)
        out.setdefault(key, []).append(value)
    return out


def _port_range(value: str, item: str) -> tuple[int, int, str | None]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?(?:/(tcp|udp|sctp))?", value)
    if m is None or int(m.group(2) or m.group(1)) < int(m.group(1)):
        raise BadInput(
            f"--filter {item!r}: publish is PORT[-END][/PROTO], e.g. publish=80 or publish=8000-8099/tcp"
        )
    return int(m.group(1)), int(m.group(2) or m.group(1)), m.group(3)


def matches(rec: SandboxRecord, filters: dict[str, list[str]]) -> bool:
    """Does the sandbox pass every filter key? ``publish`` matches a published container port, as
    ``docker ps --filter publish=`` does; ``name`` matches a substring (or a ^/$-anchored regex)."""
    tests: dict[str, Callable[[str], bool]] = {
        "name": lambda v: re.search(v, rec.name) is not None if any(c in v for c in "^$") else v in rec.name,
        "id": lambda v: rec.id.startswith(v),
        "status": lambda v: rec.status == v,
        "network": lambda v: rec.sandbox.network == v,
        "publish": lambda v: _publishes(rec, *_port_range(v, f"publish={v}")),
    }
    return all(any(tests[k](v) for v in vals) for k, vals in filters.items())


def _publishes(rec: SandboxRecord, lo: int, hi: int, proto: str | None) -> bool:
    return any(lo <= m.container_port <= hi and proto in (None, m.proto) for m in rec.sandbox.mappings)


# ---------------------------------------------------------------------- --format
def render(template: str, data: Any) -> str:
    """``data`` through a Go template; a bad template is one line naming it."""
    try:
        return gotemplate.render(template, data)
    except gotemplate.TemplateError as e:
        raise BadInput(f"--format {template!r}: {e}") from None


def table(rows: Sequence[Sequence[str]], headers: Sequence[str] | None) -> list[str]:
    """Columns padded to their widest cell, three spaces apart (Docker's tabwriter layout)."""
    allrows = ([list(headers)] if headers else []) + [list(r) for r in rows]
    if not allrows:
        return []
    ncol = max(len(r) for r in allrows)
    widths = [max((len(r[i]) for r in allrows if i < len(r)), default=0) for i in range(ncol)]
    return ["   ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in allrows]


def format_rows(template: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    """``--format`` for a list command: ``json`` (one object per line), ``table TEMPLATE`` (a
    header from the fields' names, cells split at tabs), or a Go template per row."""
    if template == "json":
        return [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in rows]
    if template.startswith("table"):
        body = template[len("table") :].strip() or "\t".join("{{." + c + "}}" for c in PS_COLUMNS)
        body = body.replace("\\t", "\t")
        names = {k: HEADERS.get(k, k.upper()) for k in (rows[0] if rows else HEADERS)}
        header = render(body, names).split("\t")
        return table([render(body, r).split("\t") for r in rows], header)
    return [render(template, r) for r in rows]


def relay_labels(rec: SandboxRecord, stats: dict[str, Any]) -> dict[str, Any]:
    """A nat (or ebpf) mode sandbox's relay counters under the address the relay really serves: its
    ``[::]:P`` socket only ever sees ``[::1]`` clients when kernel NAT serves every other IPv6
    client (``firewall.rules.needs_relay``), so it is shown as ``[::1]:P``, not as a second
    owner of ``[::]:P`` beside NAT."""
    if rec.sandbox.publish_mode not in KERNEL_PATH_MODES:
        return stats
    out = {}
    for key, value in stats.items():
        m = next((m for m in rec.sandbox.mappings if m.docker_format() == key), None)
        if (
            m is not None
            and m.host_ip.version == 6
            and m.host_ip.is_unspecified
            and m.container_ip.version == 6
        ):
            key = key.replace("[::]:", "[::1]:", 1)
        out[key] = value
    return out
