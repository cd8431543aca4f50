"""Parsing of Docker's publish syntax (``-p``, ``--expose``, ``-e``) into frozen dataclasses.

Pure: no I/O. Every malformed input raises ``BadInput`` whose message names the offending
text and says what a valid one looks like. Grammar (Docker's)::

    -p [ip:][hostPort[-end]:]containerPort[-end][/tcp|udp|sctp]
    ip is a dotted IPv4 address or a bracketed IPv6 one: [::1]:8080:80, [::]::80
    --expose port[-end][/proto]
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import BadInput
from .model import PROTOS, IPAddress, Proto

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
                "a single container port to pick any free host port in the range")

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


def _port(text: str, whole: str, what: str) -> int:
    if not text.isdigit():
        raise BadInput(f"-p {whole}: {what} {text!r} is not a number; expected {PORT_SYNTAX}")
    n = int(text)
    if not 1 <= n <= 65535:
        raise BadInput(f"-p {whole}: {what} {n} is out of range; ports are 1-65535")
    return n


def _range(text: str, whole: str, what: str) -> PortRange:
    lo, sep, hi = text.partition("-")
    a = _port(lo, whole, what)
    b = _port(hi, whole, what) if sep else a
    if b < a:
        raise BadInput(f"-p {whole}: {what} range {a}-{b} is reversed; write it low-high")
    return PortRange(a, b)


def _proto(text: str, whole: str) -> Proto:
    p = text.lower()
    if p not in PROTOS:
        raise BadInput(f"-p {whole}: unknown protocol {text!r}; use tcp, udp or sctp")
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
        if close < 0 or body[close + 1:close + 2] != ":":
            raise BadInput(f"-p {whole}: unterminated IPv6 address; write it as [::1]:8080:80")
        host_ip = parse_ip(body[:close + 1], whole)
        rest = body[close + 2:].split(":")
        if len(rest) != 2:
            raise BadInput(f"-p {whole}: after the address give hostPort:containerPort (hostPort may be empty)")
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
    host = _range(host_part, whole, "host port") if host_part else None
    return PortSpec(host_ip=host_ip, host=host, container=container, proto=proto, text=whole)


def parse_expose(text: str) -> ExposeSpec:
    """Parse one ``--expose`` value: ``port[-end][/proto]``."""
    body, slash, proto_text = text.partition("/")
    proto = _proto(proto_text, text) if slash else "tcp"
    if not body:
        raise BadInput(f"--expose {text!r}: no port; expected port[-end][/tcp|udp|sctp]")
    return ExposeSpec(ports=_range(body, text, "exposed port"), proto=proto)


def parse_env(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise BadInput(f"-e {text!r}: expected KEY=VALUE with a shell-style KEY")
    return key, value if eq else ""


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):  # match() with $ would accept a trailing newline
        raise BadInput(f"name {name!r} is invalid; use 1-63 letters, digits, '_', '.', '-', "
                       "starting with a letter or digit")
    return name
