"""The CLI side of a sandbox's privileges: the ``run`` flags, ``inspect``'s HostConfig, ``exec``'s setup.

``add_args`` adds Docker's ``--cap-add``, ``--cap-drop``, ``--privileged``, ``--user`` and our
``--allow-spoof`` to ``run``; ``privileges_from`` reads them into a ``caps_model.Privileges``,
resolving a user or group *name* with this host's passwd and group databases (a sandbox shares the
host's filesystem, so these are the files CMD sees). As Docker does, ``--user UID`` without a
group takes the passwd entry's primary group, and 0 when there is no entry. ``host_config``
is what ``inspect`` shows: the flags, the effective capability set they give, and the running
CMD's own ``CapEff``/``CapBnd`` read from /proc. ``exec_setup`` gives ``exec NAME`` the
sandbox's privileges and its own /sys, as CMD has.
"""

from __future__ import annotations

import argparse
import grp
import pwd
from collections.abc import Callable
from typing import Any

from . import caps_model
from .errors import BadInput
from .state import SandboxRecord


def add_args(r: argparse.ArgumentParser) -> None:
    r.add_argument(
        "--cap-add",
        action="append",
        default=[],
        metavar="CAP",
        help="add a Linux capability to CMD's set (Docker's names, e.g. NET_ADMIN; ALL for all)",
    )
    r.add_argument(
        "--cap-drop",
        action="append",
        default=[],
        metavar="CAP",
        help="drop a Linux capability from CMD's set (ALL drops every one not added back)",
    )
    r.add_argument(
        "--privileged",
        action="store_true",
        help="CMD keeps every capability and may gain more (no no_new_privs); anti-spoofing stays",
    )
    r.add_argument("-u", "--user", metavar="UID[:GID]", help="run CMD as this user (number or name)")
    r.add_argument(
        "--allow-spoof",
        action="store_true",
        help="lab use: do not check frames from the sandbox's port against its MAC and addresses",
    )


def _resolve_user(text: str) -> str:
    """A user/group name in ``--user`` as numbers; a bare uid gets its passwd group (Docker)."""
    user, sep, group = text.partition(":")
    if user and not user.isdigit():
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise BadInput(f"--user {text!r}: no user {user!r} on this host; give a numeric UID") from None
        user = str(entry.pw_uid)
        if not sep:
            return f"{user}:{entry.pw_gid}"
    if sep and group and not group.isdigit():
        try:
            group = str(grp.getgrnam(group).gr_gid)
        except KeyError:
            raise BadInput(f"--user {text!r}: no group {group!r} on this host; give a numeric GID") from None
    if not sep and user.isdigit():
        try:
            return f"{user}:{pwd.getpwuid(int(user)).pw_gid}"
        except (KeyError, OverflowError):
            return user
    return f"{user}{sep}{group}"


def privileges_from(args: argparse.Namespace) -> caps_model.Privileges:
    return caps_model.parse_privileges(
        cap_add=args.cap_add,
        cap_drop=args.cap_drop,
        privileged=args.privileged,
        user=_resolve_user(args.user) if args.user else None,
        allow_spoof=args.allow_spoof,
    )


def host_config(rec: SandboxRecord) -> dict[str, Any]:
    """``inspect``'s HostConfig: the flags, the effective set, and the running CMD's own masks."""
    from .kernel import caps

    p = rec.spec.privileges
    eff = sorted(caps_model.effective(p, caps.last_cap()), key=caps_model.CAPABILITIES.__getitem__)
    out: dict[str, Any] = {
        "Privileged": p.privileged,
        "CapAdd": list(p.cap_add),
        "CapDrop": list(p.cap_drop),
        "User": p.user_text,
        "AllowSpoof": p.allow_spoof,
        "NoNewPrivileges": not p.privileged,
        "EffectiveCaps": eff,
    }
    live = caps.status_caps(rec.cmd_pid) if rec.status == "running" and rec.cmd_pid else {}
    if live:
        out["CmdCapEff"] = f"{live.get('CapEff', 0):016x}"
        out["CmdCapBnd"] = f"{live.get('CapBnd', 0):016x}"
    return out


def exec_setup(privileges: caps_model.Privileges | None, netns_path: str | None) -> Callable[[], None] | None:
    """The child setup of ``exec``: a sandbox's privileges (``exec NAME``, from its record), and
    /sys matching whatever network namespace it enters."""
    from .kernel import caps

    if privileges is not None:
        return caps.child_setup(privileges, netns_path)
    if netns_path is None:
        return None
    return caps.child_setup(caps_model.Privileges(privileged=True), netns_path)
