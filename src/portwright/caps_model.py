"""A sandbox's privileges, as Docker words them: capabilities, ``--user``, ``--privileged``, spoofing.

Pure (no I/O). ``parse_privileges`` turns ``--cap-add``/``--cap-drop``/``--privileged``/``--user``/
``--allow-spoof`` into one frozen ``Privileges``; ``effective`` computes the capability set CMD
gets with Docker's rules (moby ``oci/caps.TweakCapabilities``): ``--privileged`` gives every
capability; ``--cap-add ALL`` gives every capability but the dropped ones; ``--cap-drop ALL``
gives exactly the added ones; otherwise the default set minus the drops plus the adds (an add
wins over a drop of the same name). Names are accepted with or without ``CAP_``, in any case.

The default set is Docker's without NET_RAW: ping works through ``net.ipv4.ping_group_range``
(ICMP datagram sockets, set in every sandbox's namespace), so there is no reason to hand out raw
sockets, with which a sandbox can forge any frame on its bridge.

``plan_for`` turns privileges into what the child does between fork and exec
(``kernel.caps.apply``): which capabilities stay in the bounding and effective sets, the
uid/gid, and whether no_new_privs is set (always, unless ``--privileged``). NET_RAW, off by
default, is kept in the bounding set only (see ``plan_for``), so Debian's file-capability ping
still starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import BadInput

# linux/capability.h (CAP_CHOWN 0 ... CAP_CHECKPOINT_RESTORE 40, CAP_LAST_CAP).
CAPABILITIES: dict[str, int] = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "DAC_READ_SEARCH": 2,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "LINUX_IMMUTABLE": 9,
    "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11,
    "NET_ADMIN": 12,
    "NET_RAW": 13,
    "IPC_LOCK": 14,
    "IPC_OWNER": 15,
    "SYS_MODULE": 16,
    "SYS_RAWIO": 17,
    "SYS_CHROOT": 18,
    "SYS_PTRACE": 19,
    "SYS_PACCT": 20,
    "SYS_ADMIN": 21,
    "SYS_BOOT": 22,
    "SYS_NICE": 23,
    "SYS_RESOURCE": 24,
    "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26,
    "MKNOD": 27,
    "LEASE": 28,
    "AUDIT_WRITE": 29,
    "AUDIT_CONTROL": 30,
    "SETFCAP": 31,
    "MAC_OVERRIDE": 32,
    "MAC_ADMIN": 33,
    "SYSLOG": 34,
    "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36,
    "AUDIT_READ": 37,
    "PERFMON": 38,
    "BPF": 39,
    "CHECKPOINT_RESTORE": 40,
}
_BY_NUMBER = {v: k for k, v in CAPABILITIES.items()}
ALL = "ALL"

# Docker's default set (moby oci/caps/defaults.go DefaultCapabilities), without NET_RAW.
DOCKER_DEFAULT = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
)
DEFAULT_CAPS = frozenset(c for c in DOCKER_DEFAULT if c != "NET_RAW")
MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to setuid/setresuid


@dataclass(frozen=True, slots=True)
class Privileges:
    """What CMD may do: normalized capability names (``ALL`` kept as is), user, flags."""

    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    uid: int | None = None  # None: root, as Docker without --user
    gid: int | None = None  # None with a uid: 0, as Docker for a uid without a passwd entry
    allow_spoof: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "cap_add": list(self.cap_add),
            "cap_drop": list(self.cap_drop),
            "privileged": self.privileged,
            "uid": self.uid,
            "gid": self.gid,
            "allow_spoof": self.allow_spoof,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Privileges:
        if not d:
            return cls()
        return cls(
            cap_add=tuple(d.get("cap_add", ())),
            cap_drop=tuple(d.get("cap_drop", ())),
            privileged=bool(d.get("privileged")),
            uid=d.get("uid"),
            gid=d.get("gid"),
            allow_spoof=bool(d.get("allow_spoof")),
        )

    @property
    def user_text(self) -> str:
        if self.uid is None:
            return "0:0"
        return f"{self.uid}:{self.gid or 0}"


def normalize_cap(text: str, flag: str) -> str:
    """``net_admin``, ``CAP_NET_ADMIN`` -> ``NET_ADMIN``; ``all`` -> ``ALL``."""
    name = text.strip().upper()
    if name.startswith("CAP_"):
        name = name[4:]
    if name != ALL and name not in CAPABILITIES:
        raise BadInput(f"{flag} {text!r}: unknown capability; use a name such as NET_ADMIN, or ALL")
    return name


def parse_user(text: str) -> tuple[int, int | None]:
    """``UID[:GID]`` (numbers) -> (uid, gid or None)."""
    u, sep, g = text.partition(":")
    ids: list[int] = []
    for part in (u, g) if sep else (u,):
        if not part.isdigit() or int(part) > MAX_ID:
            raise BadInput(
                f"--user {text!r}: give a numeric UID[:GID] (0-{MAX_ID}), or a user name known to this host"
            )
        ids.append(int(part))
    return ids[0], ids[1] if sep else None


def parse_privileges(
    *,
    cap_add: Sequence[str] = (),
    cap_drop: Sequence[str] = (),
    privileged: bool = False,
    user: str | None = None,
    allow_spoof: bool = False,
) -> Privileges:
    """The flags' words, validated and normalized (each bad one named in its error)."""
    uid, gid = parse_user(user) if user else (None, None)
    return Privileges(
        cap_add=tuple(dict.fromkeys(normalize_cap(c, "--cap-add") for c in cap_add)),
        cap_drop=tuple(dict.fromkeys(normalize_cap(c, "--cap-drop") for c in cap_drop)),
        privileged=privileged,
        uid=uid,
        gid=gid,
        allow_spoof=allow_spoof,
    )


def known_caps(last_cap: int) -> frozenset[str]:
    """The capabilities this kernel has (``/proc/sys/kernel/cap_last_cap``)."""
    return frozenset(n for n, v in CAPABILITIES.items() if v <= last_cap)


def effective(p: Privileges, last_cap: int = max(CAPABILITIES.values())) -> frozenset[str]:
    """The capability names CMD runs with, by Docker's rules (see the module docstring)."""
    every = known_caps(last_cap)
    if p.privileged:
        return every
    if ALL in p.cap_add:
        return every - set(p.cap_drop)
    if ALL in p.cap_drop:
        return frozenset(p.cap_add) & every
    return ((DEFAULT_CAPS - set(p.cap_drop)) | set(p.cap_add)) & every


def mask(names: Iterable[str]) -> int:
    """A capability set as the kernel's bit mask (``CapEff`` in /proc/PID/status)."""
    out = 0
    for n in names:
        out |= 1 << CAPABILITIES[n]
    return out


def names(bits: int) -> list[str]:
    """A bit mask as capability names, in number order (unknown bits as ``CAP_<n>``)."""
    return [_BY_NUMBER.get(i, f"CAP_{i}") for i in range(bits.bit_length()) if bits >> i & 1]


@dataclass(frozen=True, slots=True)
class Plan:
    """What the child does before exec (``kernel.caps.apply``)."""

    keep: frozenset[int] | None  # capability numbers kept; None: change nothing (--privileged)
    bounding: frozenset[int] | None  # the bounding set: keep, and NET_RAW unless dropped by name
    uid: int | None
    gid: int | None
    no_new_privs: bool


def plan_for(p: Privileges, last_cap: int) -> Plan:
    """The child's steps for ``p``. NET_RAW, off by default, stays in the bounding set unless
    ``--cap-drop`` names it (or ALL): exec of a program with file capabilities the bounding set
    lacks fails with EPERM, and Debian's ping has ``cap_net_raw+ep``. no_new_privs keeps any exec
    from gaining it (the kernel intersects the new permitted set with the old), so ping starts,
    gets no raw socket, and uses an ICMP datagram socket (``ping_group_range``)."""
    if p.privileged:
        return Plan(keep=None, bounding=None, uid=p.uid, gid=_gid(p), no_new_privs=False)
    keep = frozenset(CAPABILITIES[n] for n in effective(p, last_cap))
    raw = frozenset() if {ALL, "NET_RAW"} & set(p.cap_drop) else frozenset({CAPABILITIES["NET_RAW"]})
    return Plan(keep=keep, bounding=keep | raw, uid=p.uid, gid=_gid(p), no_new_privs=True)


def _gid(p: Privileges) -> int | None:
    return p.gid if p.gid is not None else (0 if p.uid is not None else None)


def risky(p: Privileges) -> list[str]:
    """What ``audit`` reports about these privileges (empty: Docker-like defaults)."""
    out = []
    if p.privileged:
        out.append("--privileged: CMD has every capability and no no_new_privs")
    elif ALL in p.cap_add or {"NET_ADMIN", "NET_RAW", "SYS_ADMIN"} & set(p.cap_add):
        added = ", ".join(c for c in p.cap_add if c in (ALL, "NET_ADMIN", "NET_RAW", "SYS_ADMIN"))
        out.append(f"--cap-add {added}")
    if p.allow_spoof:
        out.append("--allow-spoof: frames from its port are not checked against its MAC and addresses")
    return out
