"""``audit``'s privilege checks: running sandboxes that hold more than Docker's defaults (pure).

Codes: ``privileged`` (``--privileged``: every capability, no no_new_privs), ``spoofable``
(``--allow-spoof``: frames from its bridge port are not checked, so it can take a neighbour's
address), ``capabilities`` (``--cap-add`` of NET_ADMIN, NET_RAW, SYS_ADMIN or ALL: it can
reconfigure its interface or forge frames; anti-spoofing still holds at the bridge).
"""

from __future__ import annotations

from ..caps_model import ALL
from .snapshot import Snapshot

_RISKY_ADDS = (ALL, "NET_ADMIN", "NET_RAW", "SYS_ADMIN")
Raw = tuple[str, str, str, str, str, str]


def privilege_findings(snap: Snapshot) -> list[Raw]:
    """Each finding as (severity, code, subject, message, fix, owner); ``audit`` makes them
    ``Finding``s (this module does not import it: no import circle)."""
    out: list[Raw] = []
    for rec in snap.sandboxes:
        if rec.status == "exited":
            continue
        p = rec.spec.privileges
        subject, owner = f"sandbox {rec.name}", f"sandbox {rec.name!r} ({rec.id})"
        if p.privileged:
            out.append(
                _finding(
                    "medium",
                    "privileged",
                    subject,
                    "runs --privileged: CMD has every capability and may gain more (no no_new_privs)",
                    "run it again without --privileged, adding only the capabilities it needs (--cap-add)",
                    owner=owner,
                )
            )
        elif added := [c for c in p.cap_add if c in _RISKY_ADDS]:
            out.append(
                _finding(
                    "low",
                    "capabilities",
                    subject,
                    f"runs with --cap-add {','.join(added)}: it can reconfigure its interface or forge "
                    "frames (anti-spoofing still drops them at the bridge)",
                    "drop the capability unless the sandbox needs it",
                    owner=owner,
                )
            )
        if p.allow_spoof and rec.sandbox.veth:
            out.append(
                _finding(
                    "medium",
                    "spoofable",
                    subject,
                    f"runs with --allow-spoof: frames from its port {rec.sandbox.veth} are not checked, "
                    "so it can claim a neighbour's address on its bridge",
                    "run it again without --allow-spoof (meant for deliberate lab use)",
                    owner=owner,
                )
            )
    return out


def _finding(severity: str, code: str, subject: str, message: str, fix: str, owner: str) -> Raw:
    return (severity, code, subject, message, fix, owner)
