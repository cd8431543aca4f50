"""Dropping privileges and seeing the namespace's /sys, in a child between fork and exec.

``apply(plan)`` carries out a ``caps_model.Plan``: drop every capability not kept from the
bounding set (``PR_CAPBSET_DROP``), clear the ambient set, switch to the plan's gid and uid
(``setuid`` from root to another uid clears the permitted and effective sets, as Docker's non-root
users get none), set the effective/permitted sets with ``capset`` and the inheritable one empty,
and set no_new_privs, so a set-uid or file-capability program (Debian's ``ping`` has
``cap_net_raw+ep``) gains nothing. ``private_sys(name)`` does what ``ip netns exec`` does:
a private mount namespace (``unshare(CLONE_NEWNS)``), ``/`` made a recursive slave so nothing
leaks back to the host, and a fresh sysfs on ``/sys``, which shows the network namespace the
mounting task is in: ``/sys/class/net`` then lists the sandbox's interfaces.

Only ctypes on libc (``prctl``, ``capset``, ``capget``, ``unshare``, ``mount``, ``umount2``);
libc is loaded at import, so the child only calls. Constants are from the UAPI headers named
beside them. Errors raise OSError with the call's name; the child reports them through
``spawn``'s exec-failure pipe.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

from ..caps_model import Plan, Privileges, plan_for

# linux/prctl.h
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# linux/capability.h
LINUX_CAPABILITY_VERSION_3 = 0x20080522  # two 32-bit words per set
# linux/sched.h
CLONE_NEWNS = 0x00020000
# linux/mount.h (sys/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REC = 16384
MS_SLAVE = 1 << 19
MNT_DETACH = 2
CAP_LAST_CAP_PATH = "/proc/sys/kernel/cap_last_cap"

# The process's own symbols, libc's among them: find_library("c") ran `ldconfig -p` at every import.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


class _Header(ctypes.Structure):  # struct __user_cap_header_struct
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):  # struct __user_cap_data_struct
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    with open(CAP_LAST_CAP_PATH) as f:
        return int(f.read())


def _prctl(option: int, arg: int = 0, what: str = "prctl") -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), what)


def capget() -> tuple[int, int, int]:
    """This thread's (effective, permitted, inheritable) masks."""
    hdr = _Header(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    _check(_libc.capget(ctypes.byref(hdr), data), "capget")
    eff = data[0].effective | data[1].effective << 32
    prm = data[0].permitted | data[1].permitted << 32
    inh = data[0].inheritable | data[1].inheritable << 32
    return eff, prm, inh


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr = _Header(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i in (0, 1):
        data[i].effective = effective >> (32 * i) & 0xFFFFFFFF
        data[i].permitted = permitted >> (32 * i) & 0xFFFFFFFF
        data[i].inheritable = inheritable >> (32 * i) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")


def apply(plan: Plan, top: int) -> None:
    """Carry out ``plan`` in this (single-threaded, about to exec) process; ``top`` is
    ``last_cap()``, read by the parent."""
    if plan.keep is None and plan.uid is None:
        return
    if plan.keep is not None:
        bounding = plan.bounding if plan.bounding is not None else plan.keep
        for cap in range(top + 1):
            if cap not in bounding:
                _prctl(PR_CAPBSET_DROP, cap, f"prctl(PR_CAPBSET_DROP, {cap})")
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    if plan.uid is not None:
        gid = plan.gid or 0
        os.setgroups([gid])
        os.setresgid(gid, gid, gid)
        os.setresuid(plan.uid, plan.uid, plan.uid)  # from root to another uid: caps cleared
    if plan.keep is not None and (plan.uid is None or plan.uid == 0):
        _eff, permitted, _inh = capget()
        keep = sum(1 << c for c in plan.keep) & permitted
        _capset(keep, keep, 0)
    if plan.no_new_privs:
        _prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")


def private_sys(source: str) -> None:
    """Remount /sys in a private mount namespace so that it shows this network namespace
    (``ip netns exec``'s steps; ``source`` names the mount, as ip uses the netns name)."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(b"none", b"/", None, MS_SLAVE | MS_REC, None), "mount --make-rslave /")
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    st = os.statvfs("/sys")
    if st.f_flag & os.ST_RDONLY:
        flags |= MS_RDONLY
    _check(_libc.umount2(b"/sys", MNT_DETACH), "umount /sys")
    _check(_libc.mount(source.encode(), b"/sys", b"sysfs", flags, None), "mount sysfs /sys")


def status_caps(pid: int) -> dict[str, int]:
    """``Cap*`` lines of /proc/PID/status as masks (empty when the process is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Cap"):
                    key, _, value = line.partition(":")
                    out[key] = int(value.strip(), 16)
    except OSError:
        return {}
    return out


def child_setup(privileges: Privileges, netns_path: str | None) -> Callable[[], None]:
    """What a child runs last before exec: /sys for its network namespace (when it has its own),
    then ``privileges`` applied. Everything that reads files is done here, in the parent."""
    top = last_cap()
    plan = plan_for(privileges, top)
    source = os.path.basename(netns_path) if netns_path else None

    def setup() -> None:
        try:
            if source is not None:
                private_sys(source)
            apply(plan, top)
        except OSError as e:  # said on stderr too: a preexec_fn's exception loses its message
            os.write(2, f"portwright: preparing CMD: {e.strerror or e}\n".encode())
            raise

    return setup
