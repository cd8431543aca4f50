"""host-remap in ``audit`` (issue 12): each running remapped host-network sandbox is shown with
its remapping (info), and one whose bind programs are no longer pinned in bpffs is reported as
degraded (high): its CMD's binds are then neither remapped nor confined. Pure over a Snapshot;
findings are (severity, code, subject, message, fix, owner) tuples that ``audit`` turns into
``Finding``s (this module does not import it: no import circle)."""

from __future__ import annotations

from .snapshot import Snapshot

Raw = tuple[str, str, str, str, str, str]
#: The bind programs' link names (publish.hostremap_progs.plan): without them nothing is remapped.
BIND_LINKS = ("pw_bind4", "pw_bind6")


def remap_findings(snap: Snapshot) -> list[Raw]:
    out: list[Raw] = []
    for rec in snap.sandboxes:
        if rec.sandbox.publish_mode != "host-remap" or not snap.alive(rec):
            continue
        subject, owner = f"sandbox {rec.name}", f"sandbox {rec.name!r} ({rec.id})"
        shown = ", ".join(
            dict.fromkeys(
                f":{m.container_port}/{m.proto} -> {m.host_binding()}" for m in rec.sandbox.mappings
            )
        )
        links = snap.remap_links(rec.id)
        missing = [n for n in BIND_LINKS if links is not None and n not in links]
        if missing:
            out.append(
                (
                    "high",
                    "degraded",
                    subject,
                    f"{subject} uses the host network with -p, but its {' and '.join(missing)} programs "
                    "are no longer pinned: its command's binds are neither remapped nor confined",
                    f"restart it (portwright rm -f {rec.name}, then run it again)",
                    owner,
                )
            )
            continue
        pid = f"CMD pid {rec.cmd_pid}" if rec.cmd_pid else "CMD"
        out.append(
            (
                "info",
                "remapped",
                subject,
                f"{subject} ({pid}) shares the host network; its binds are remapped at bind() by cgroup "
                f"BPF: {shown}; other ports below the ephemeral range are refused (EPERM)",
                "nothing to do",
                owner,
            )
        )
    return out
