"""What the shared ``portwright-proxy`` relay serves, as ``who`` and ``ports`` see it (issue 15).

dockerd's ports under ``--userland-proxy-path=portwright-proxy`` are held by one relay process
(``pw-relay``) and its workers (``pw-relay-w<N>``), not by a process per port: the socket's
holder alone cannot say which container a port serves. The relay can: its status query
(``proxy/shared.py``, ``PWQ1``) lists every registration with its container and its waiter (the
process dockerd started and will stop). ``read`` asks every running relay once; ``for_listener``
is the pure lookup ``classify`` uses, so tests replay a recorded status.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..kernel.sockets import Listener, Process
from ..model import IPAddress

#: Seconds ``who`` waits for a relay's status before saying it could not ask.
QUERY_TIMEOUT = 2.0
#: How the relay is started (``python -I -m portwright.proxy.shared serve --dir D``).
RELAY_MODULE = "portwright.proxy.shared"


@dataclass(frozen=True, slots=True)
class RelayPort:
    """One registration of a shared relay: a host port, its container endpoint and its waiter."""

    relay_pid: int
    proto: str
    host_ip: IPAddress | None  # None: every address
    host_port: int
    container_ip: IPAddress
    container_port: int
    waiter_pid: int


def is_relay(proc: Process) -> bool:
    """Is this the shared relay or one of its workers?"""
    return proc.comm.startswith("pw-relay") or (RELAY_MODULE in proc.cmdline and " serve" in proc.cmdline)


def relay_dir_of(cmdline: str) -> str | None:
    """The ``--dir`` a relay was started with (None: the default directory)."""
    args = cmdline.split()
    for i, a in enumerate(args[:-1]):
        if a == "--dir":
            return args[i + 1]
    return None


def parse_status(st: dict[str, Any]) -> list[RelayPort]:
    """The registrations in one relay status answer; entries it cannot read are skipped."""
    out = []
    for p in st.get("ports", []):
        try:
            host_ip = p.get("host_ip")
            out.append(
                RelayPort(
                    relay_pid=int(st["pid"]),
                    proto=str(p["proto"]),
                    host_ip=ipaddress.ip_address(host_ip) if host_ip else None,
                    host_port=int(p["host_port"]),
                    container_ip=ipaddress.ip_address(p["container_ip"]),
                    container_port=int(p["container_port"]),
                    waiter_pid=int(p["waiter_pid"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


def for_listener(ports: Iterable[RelayPort], ln: Listener) -> RelayPort | None:
    """The registration a relay socket serves: same protocol and port, the same address if any."""
    same = [p for p in ports if p.proto == ln.proto and p.host_port == ln.port]
    for p in same:
        if p.host_ip == ln.ip or (p.host_ip is None and ln.ip.is_unspecified):
            return p
    return same[0] if len(same) == 1 else None


def read(listeners: Iterable[Listener]) -> tuple[list[RelayPort], list[str]]:
    """Ask every relay that holds one of ``listeners`` for its registrations; (ports, notes)."""
    from ..proxy.shared import query  # the relay's own client: one protocol, one place

    dirs: dict[str | None, int] = {}
    for ln in listeners:
        for proc in ln.processes:
            if is_relay(proc) and proc.comm == "pw-relay":
                dirs.setdefault(relay_dir_of(proc.cmdline), proc.pid)
    ports: list[RelayPort] = []
    notes: list[str] = []
    for directory, pid in dirs.items():
        try:
            ports += parse_status(query(directory, timeout=QUERY_TIMEOUT))
        except (OSError, ValueError) as e:
            notes.append(f"the shared relay (pid {pid}) did not answer its status query: {e}")
    return ports, notes
