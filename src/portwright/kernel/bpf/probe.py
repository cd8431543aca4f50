"""Feature probes: load (and attach) tiny programs to learn what this kernel and cgroup setup
allow, instead of guessing from the kernel version. Each probe returns (ok, reason) and is cached
for the life of the process."""

from __future__ import annotations

import functools

from .. import cgroup
from . import asm
from . import consts as c
from .links import Link
from .progs import Program
from .syscall import BpfError


def _allow_with_netns_cookie() -> bytes:
    """r0 = bpf_get_netns_cookie(ctx); return 1 — the helper the connect-time rewrite relies on."""
    return asm.assemble(
        [
            asm.mov64_reg(c.R6, c.R1),
            asm.call(c.BPF_FUNC_get_netns_cookie),
            asm.ldx_w(c.R2, c.R6, c.SA_USER_PORT),
            asm.mov64_imm(c.R0, 1),
            asm.exit(),
        ]
    )


def _allow() -> bytes:
    return asm.assemble([asm.mov64_imm(c.R0, 1), asm.exit()])


def _load(code: bytes, attach_type: int, name: str) -> tuple[Program | None, str]:
    try:
        return Program.load(c.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, code, attach_type, name), ""
    except BpfError as e:
        return None, str(e).splitlines()[0]
    except OSError as e:
        return None, f"bpf(): {e}"


@functools.cache
def sock_addr(attach_type: int) -> tuple[bool, str]:
    """Can a cgroup sock_addr program that calls bpf_get_netns_cookie load at attach_type?"""
    what = c.ATTACH_NAMES.get(attach_type, str(attach_type))
    prog, why = _load(_allow_with_netns_cookie(), attach_type, f"pw_probe_{what}"[:15])
    if prog is None:
        return False, f"cannot load a {what} program: {why}"
    prog.close()
    return True, ""


@functools.cache
def connect4() -> tuple[bool, str]:
    return sock_addr(c.BPF_CGROUP_INET4_CONNECT)


@functools.cache
def bind4() -> tuple[bool, str]:
    return sock_addr(c.BPF_CGROUP_INET4_BIND)


@functools.cache
def cgroup_link(attach_type: int = c.BPF_CGROUP_INET4_GETPEERNAME) -> tuple[bool, str]:
    """Can we BPF_LINK_CREATE on the cgroup2 root? A program that allows everything is attached
    and detached at once (on getpeername4 by default: the least used hook)."""
    root = cgroup.cgroup2_root()
    if root is None:
        return False, "no cgroup2 hierarchy is mounted"
    prog, why = _load(_allow(), attach_type, "pw_probe_link")
    if prog is None:
        return False, why
    try:
        with prog, Link.attach_cgroup(prog, root, attach_type) as link:
            link.detach()
    except (BpfError, OSError) as e:
        return False, f"cannot link a program to the cgroup2 root {root}: {str(e).splitlines()[0]}"
    return True, ""


@functools.cache
def connect_rewrite() -> tuple[bool, str]:
    """Everything the ebpf publish mode needs: every hook it uses loads, and links attach at the root."""
    for att in (
        c.BPF_CGROUP_INET4_CONNECT,
        c.BPF_CGROUP_INET6_CONNECT,
        c.BPF_CGROUP_UDP4_SENDMSG,
        c.BPF_CGROUP_UDP6_SENDMSG,
        c.BPF_CGROUP_UDP4_RECVMSG,
        c.BPF_CGROUP_UDP6_RECVMSG,
        c.BPF_CGROUP_INET4_GETPEERNAME,
        c.BPF_CGROUP_INET6_GETPEERNAME,
    ):
        ok, why = sock_addr(att)
        if not ok:
            return ok, why
    return cgroup_link()
