"""What ``portwright start`` asks for again: the host ports an exited sandbox had (pure).

An exited detached sandbox keeps, in its ``last_addrs`` JSON, each published mapping's
``[proto, host address, container port, host port]``. ``start`` hands them to the allocator as
preferences: a port drawn at random the first time (``-p 80``, ``-P``, ``-p 8000-8010:80``) comes
back where it is still free, as Docker keeps a restarted container's ports; only a port someone
has taken meanwhile is drawn again, and ``moved_note`` says so in one line.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .model import Mapping, address_text

# (proto, host address as text, container port) -> the host port it had
Preferred = dict[tuple[str, str, int], int]


def last_ports(mappings: Iterable[Mapping]) -> list[list[Any]]:
    """The JSON kept for ``start``: one ``[proto, host_ip, container_port, host_port]`` per mapping."""
    return [[m.proto, address_text(m.host_ip), m.container_port, m.host_port] for m in mappings]


def preferred(ports: Sequence[Sequence[Any]] | None) -> Preferred:
    """``last_ports`` read back; malformed entries (a hand-edited or older file) are skipped."""
    out: Preferred = {}
    for entry in ports or ():
        try:
            proto, hip, cport, hport = entry
            out[(str(proto), str(hip), int(cport))] = int(hport)
        except (TypeError, ValueError):
            continue
    return out


def moved(before: Preferred, now: Iterable[Mapping]) -> list[str]:
    """``"80/tcp 0.0.0.0:32768 -> 32771"`` for each mapping whose host port was drawn again."""
    out = []
    for m in now:
        old = before.get((m.proto, address_text(m.host_ip), m.container_port))
        if old is not None and old != m.host_port:
            out.append(f"{m.container_port}/{m.proto} {m.host_ip}:{old} -> {m.host_port}")
    return out


def moved_note(name: str, changes: list[str]) -> str | None:
    """The one line ``start`` prints when a port it had was taken (None when none was)."""
    if not changes:
        return None
    return (
        f"start {name}: host port taken meanwhile, drew another: {'; '.join(changes)} "
        "(see 'portwright port " + name + "')"
    )
