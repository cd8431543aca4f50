"""``run --firewall host``'s note at publish time: which requested ports the host firewall drops.

Reads the live ruleset once and asks ``hostview.input_drop_lines`` about each explicit ``-p`` host
port (ports picked at random, ``-P`` or ``-p C``, are not known yet and are not checked). Never
fails the run: a ruleset that cannot be read gives no note.
"""

from __future__ import annotations

from ..errors import PortwrightError
from ..model import ANY4, IPAddress
from ..spec import SandboxSpec
from .hostview import input_drop_lines
from .nftview import read_ruleset

MAX_CHECKED = 64  # ports of one range checked; a 10,000-port range needs no 10,000 lines


def input_drop_notes(spec: SandboxSpec) -> list[str]:
    """Lines to print (possibly none) for a ``--firewall host`` spec."""
    if spec.firewall != "host" or not spec.bridged:
        return []
    binds: list[tuple[str, IPAddress, int]] = []
    for p in spec.publish:
        if p.host is None:
            continue
        for port in range(p.host.start, min(p.host.end, p.host.start + MAX_CHECKED - 1) + 1):
            binds.append((p.proto, p.host_ip if p.host_ip is not None else ANY4, port))
    if not binds:
        return []
    try:
        rs = read_ruleset()
    except (PortwrightError, OSError, ValueError):
        return []
    return input_drop_lines(rs, binds)
