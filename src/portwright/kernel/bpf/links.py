"""BPF links (BPF_LINK_CREATE) on cgroups: attach, pin, reopen, inspect and detach (``Link``).

A link, unlike BPF_PROG_ATTACH, belongs to whoever holds its fd or pin: pinned in bpffs it
survives the process that made it, and unpinning the last reference (or BPF_LINK_DETACH)
detaches the program. Several links on one cgroup hook run in order, like BPF_F_ALLOW_MULTI.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from . import consts as c
from .maps import get_pinned, pin_fd
from .progs import Program
from .syscall import BpfError, addr, attr, bpf


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """struct bpf_link_info for a cgroup link: cgroup_id is 0 once the link is detached."""

    link_type: int
    link_id: int
    prog_id: int
    cgroup_id: int
    attach_type: int


class Link:
    def __init__(self, fd: int, name: str = "") -> None:
        self.fd = fd
        self.name = name

    @classmethod
    def attach_cgroup(cls, prog: Program, cgroup: int | str, attach_type: int) -> Link:
        """Attach prog to a cgroup (an open directory fd, or its path) at attach_type."""
        own = isinstance(cgroup, str)
        cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY) if isinstance(cgroup, str) else cgroup
        try:
            buf = attr((0, "I", prog.fd), (4, "I", cg_fd), (8, "I", attach_type), (12, "I", 0))
            what = c.ATTACH_NAMES.get(attach_type, str(attach_type))
            fd = bpf(c.BPF_LINK_CREATE, buf, f"link {prog.name} to cgroup at {what}")
        finally:
            if own:
                os.close(cg_fd)
        return cls(fd, prog.name)

    @classmethod
    def open_pinned(cls, path: str) -> Link:
        return cls(get_pinned(path, "link"), os.path.basename(path))

    def pin(self, path: str) -> None:
        pin_fd(self.fd, path, f"link {self.name}")

    def info(self) -> LinkInfo:
        buf = ctypes.create_string_buffer(64)
        bpf(
            c.BPF_OBJ_GET_INFO_BY_FD,
            attr((0, "I", self.fd), (4, "I", len(buf)), (8, "Q", addr(buf))),
            f"link info {self.name}",
        )
        raw = buf.raw
        # struct bpf_link_info: __u32 type, id, prog_id; union { struct { __u64 cgroup_id; __u32 attach_type; } cgroup; }
        ltype, lid, pid = (int.from_bytes(raw[i : i + 4], "little") for i in (0, 4, 8))
        cgid = int.from_bytes(raw[16:24], "little")
        att = int.from_bytes(raw[24:28], "little")
        return LinkInfo(ltype, lid, pid, cgid, att)

    def detach(self) -> None:
        """BPF_LINK_DETACH: the program stops running now, even while pins of the link remain."""
        bpf(c.BPF_LINK_DETACH, attr((0, "I", self.fd)), f"detach link {self.name}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def detach_pinned(path: str) -> bool:
    """Detach the link pinned at path and remove the pin; False when there was none."""
    try:
        link = Link.open_pinned(path)
    except BpfError as e:
        if e.errno == 2:
            return False
        raise
    with link:
        try:
            link.detach()
        except BpfError as e:
            if e.errno != 67:  # ENOLINK: detached already
                raise
    unpin(path)
    return True


def unpin(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def prog_name(prog_id: int) -> str:
    """A loaded program's name (struct bpf_prog_info.name at offset 64), "" when it is gone."""
    try:
        fd = bpf(c.BPF_PROG_GET_FD_BY_ID, attr((0, "I", prog_id)), f"program {prog_id}")
    except BpfError:
        return ""
    try:
        info = ctypes.create_string_buffer(232)
        bpf(c.BPF_OBJ_GET_INFO_BY_FD, attr((0, "I", fd), (4, "I", len(info)), (8, "Q", addr(info))), "info")
        return info.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    finally:
        os.close(fd)


def cgroup_programs(cgroup: str, attach_type: int) -> list[tuple[int, str]]:
    """(id, name) of every program attached to the cgroup at attach_type (BPF_PROG_QUERY)."""
    ids = (ctypes.c_uint32 * 256)()
    cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = attr((0, "I", cg_fd), (4, "I", attach_type), (16, "Q", ctypes.addressof(ids)), (24, "I", 256))
        bpf(c.BPF_PROG_QUERY, buf, f"query programs of {cgroup}")
    finally:
        os.close(cg_fd)
    count = int.from_bytes(buf.raw[24:28], "little")
    return [(ids[i], prog_name(ids[i])) for i in range(min(count, 256))]
