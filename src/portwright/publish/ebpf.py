"""Publish mode ``ebpf``: kernel NAT for remote clients plus a connect-time rewrite for local ones.

A client on this host that dials a published binding (``127.0.0.1:8080``, ``[::1]:8080``, the
host's own address) is connected by the cgroup programs of ``ebpf_progs`` straight to the
sandbox: no DNAT, no conntrack NAT entry, no relay. Everything else — clients on other machines,
other namespaces, a client bound to a loopback source — takes the nftables path exactly as in
``nat`` mode, whose publisher this one extends (``NatPublisher`` keeps the maps and the ``::1``
relay, which still serves the one case the kernel refuses: an unconnected UDP datagram from a
v6 socket to an IPv4 sandbox).

One program set and three maps (``svc``, ``rev``, ``local``) serve every sandbox of a state
directory. They are pinned in bpffs under ``kernel.bpf.fs.pin_dir(state dir)``, attached by BPF
link to the cgroup2 root, and survive the process that made them: a supervisor restart does not
unpublish. Publishers add and remove their ``svc`` entries under a file lock; the last one out
detaches the links and removes the pins, so nothing runs once no ebpf publication is left.
``cleanup(owner)`` does the same for a sandbox whose supervisor died (kill -9), from reconcile.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from ..kernel import cgroup, netlink
from ..kernel.bpf import consts as c
from ..kernel.bpf import fs
from ..kernel.bpf.links import Link, detach_pinned
from ..kernel.bpf.maps import Map
from ..kernel.bpf.progs import Program
from ..kernel.bpf.syscall import BpfError
from ..model import Mapping
from ..state import state_dir
from . import ebpf_progs as ep
from .base import Bound
from .nat import NatPublisher
from .registry import PublishContext

LOCK_NAME = "ebpf.lock"
PIN_SUBDIR = "ebpf"
MAP_NAMES = ("svc", "rev", "local")


def owner_hash(owner: str) -> int:
    """The 64-bit tag an svc entry carries for its owner (first 8 bytes of SHA-256)."""
    return int.from_bytes(hashlib.sha256(owner.encode()).digest()[:8], "little")


def host_netns_cookie() -> int:
    """This process's network namespace cookie, as bpf_get_netns_cookie() returns it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, c.SO_NETNS_COOKIE, 8)
    return int(struct.unpack("<Q", raw)[0])


def host_addresses() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address of this namespace's interfaces (what a wildcard binding answers on)."""
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for link in netlink.addresses():
        for a in link.get("addr_info", []):
            try:
                out.append(ipaddress.ip_address(a["local"]))
            except (KeyError, ValueError):
                continue
    return out


@dataclass
class Maps:
    svc: Map
    rev: Map
    local: Map

    def fds(self) -> ep.MapFds:
        return ep.MapFds(self.svc.fd, self.rev.fd, self.local.fd)

    def close(self) -> None:
        for m in (self.svc, self.rev, self.local):
            m.close()


_SPECS = {
    "svc": (c.BPF_MAP_TYPE_HASH, ep.SVC_KEY, ep.SVC_VALUE, ep.SVC_MAX, c.BPF_F_NO_PREALLOC),
    "rev": (c.BPF_MAP_TYPE_LRU_HASH, ep.REV_KEY, ep.REV_VALUE, ep.REV_MAX, 0),
    "local": (c.BPF_MAP_TYPE_HASH, ep.LOCAL_KEY, ep.LOCAL_VALUE, ep.LOCAL_MAX, c.BPF_F_NO_PREALLOC),
}


class RewriteSet:
    """The pinned programs and maps of one state directory."""

    def __init__(self, state: str | None = None) -> None:
        self.state = state or state_dir()
        # A subdirectory of its own: other mechanisms (host-remap) pin beside it.
        self.dir = os.path.join(fs.pin_dir(self.state), PIN_SUBDIR)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        os.makedirs(self.state, exist_ok=True)
        fd = os.open(os.path.join(self.state, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _pin(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def open_maps(self) -> Maps | None:
        """The pinned maps, or None when any is missing."""
        if not all(os.path.exists(self._pin(n)) for n in MAP_NAMES):
            return None
        return Maps(*(Map.open_pinned(self._pin(n)) for n in MAP_NAMES))

    def _create_maps(self) -> Maps:
        fs.ensure_pin_dir(self.state)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        made = []
        for n in MAP_NAMES:
            path = self._pin(n)
            if os.path.exists(path):
                made.append(Map.open_pinned(path))
                continue
            mtype, ks, vs, mx, flags = _SPECS[n]
            m = Map.create(mtype, ks, vs, mx, f"pw_{n}", flags)
            m.pin(path)
            made.append(m)
        return Maps(*made)

    def missing_links(self) -> list[str]:
        """Programs of the set that are not attached now (no pin, or a detached link)."""
        out = []
        for name, *_ in ep.PROGRAMS:
            try:
                with Link.open_pinned(self._pin("link_" + name)) as link:
                    if link.info().cgroup_id == 0:
                        out.append(name)
            except (BpfError, OSError):
                out.append(name)
        return out

    def ensure(self) -> Maps:
        """Maps pinned and every program attached at the cgroup2 root (idempotent)."""
        maps = self._create_maps()
        missing = self.missing_links()
        if not missing:
            return maps
        root = cgroup.cgroup2_root()
        if root is None:
            raise BpfError(2, "attach: no cgroup2 hierarchy is mounted")
        cookie = host_netns_cookie()
        for name, att, family, kind in ep.PROGRAMS:
            if name not in missing:
                continue
            detach_pinned(self._pin("link_" + name))  # a detached leftover
            code = ep.build(kind, family, maps.fds(), cookie)
            with Program.load(c.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, code, att, f"pw_{name}") as prog:
                with Link.attach_cgroup(prog, root, att) as link:
                    link.pin(self._pin("link_" + name))
        return maps

    def detach_all(self) -> list[str]:
        """Detach every link and remove every pin of the set; returns problems."""
        errs = []
        for name, *_ in ep.PROGRAMS:
            try:
                detach_pinned(self._pin("link_" + name))
            except (BpfError, OSError) as e:
                errs.append(f"detach {name}: {str(e).splitlines()[0]}")
        fs.remove_pins(self.dir)
        return errs

    def refresh_local(self, maps: Maps) -> None:
        """The local map holds exactly the host's addresses (loopback is built into the programs)."""
        want = {ep.ip16(a) for a in host_addresses() if not a.is_loopback}
        have = set(maps.local.keys())
        for k in have - want:
            maps.local.delete(k)
        for k in want - have:
            maps.local.update(k, struct.pack("<I", 1))

    def remove_owner(self, maps: Maps, owner: int) -> int:
        """Delete ``owner``'s svc entries (a batch read and a batch delete); how many."""
        mine, at = ep.owner_bytes(owner), ep.OWNER_AT
        keys = [k for k, v in maps.svc.items_batch() if v[at : at + 8] == mine]
        maps.svc.delete_batch(keys)
        return len(keys)

    def release_if_unused(self, maps: Maps) -> list[str]:
        """The last publication is gone: detach and unpin (nothing left running for anyone)."""
        if next(iter(maps.svc.keys()), None) is not None:
            return []
        maps.close()
        return self.detach_all()


def entries(mappings: list[Mapping], owner: int) -> list[tuple[bytes, bytes]]:
    """The svc entries of a sandbox's mappings (every binding, both families)."""
    return [
        (ep.svc_key(m.proto, m.host_ip, m.host_port), ep.svc_value(m.container_ip, m.container_port, owner))
        for m in mappings
        if m.proto in ep.IPPROTO
    ]


class EbpfPublisher(NatPublisher):
    name = "ebpf"

    def __init__(self, ctx: PublishContext) -> None:
        super().__init__(ctx)
        self.rewrites = RewriteSet()
        self.owner = owner_hash(ctx.owner)
        self.in_bpf = False

    def publish(self, bound: Bound) -> None:
        """NAT (the nft transaction, a subprocess) and the rewrite entries, at the same time:
        at 10,000 ports each takes a few tenths of a second, and the nft half mostly waits (#11).
        Either order is safe for a client: each path alone reaches the sandbox."""
        self.in_bpf = True  # unpublish cleans up even after a partial add, or a failed NAT half
        box: dict[str, object] = {}

        def fill() -> None:
            try:
                box["added"] = add(self.ctx.owner, [m for m, _ in bound], self.rewrites)
            except BaseException as e:  # raised again in the caller's thread
                box["error"] = e

        filler = threading.Thread(target=fill, name="pw-ebpf-fill", daemon=True)
        filler.start()
        try:
            super().publish(bound)
        finally:
            filler.join()
        error = box.get("error")
        if isinstance(error, BaseException):
            raise error
        self.in_bpf = bool(box.get("added"))

    def unpublish(self) -> list[str]:
        errs: list[str] = []
        if self.in_bpf:
            errs += cleanup(self.ctx.owner, self.rewrites)
            self.in_bpf = False
        return errs + super().unpublish()

    def describe(self) -> list[dict[str, str]]:
        out = super().describe()
        for d, m in zip(out, self.mappings, strict=True):
            if m.proto in ep.IPPROTO:
                d["path"] = (
                    f"connect() rewrite to {_addr(m.container_ip, m.container_port)} (local); {d['path']}"
                )
        return out

    def check(self) -> list[str]:
        problems = super().check()
        if not self.in_bpf:
            return problems
        problems += [f"bpf program {n} is not attached" for n in self.rewrites.missing_links()]
        maps = self.rewrites.open_maps()
        if maps is None:
            return [*problems, "bpf maps are not pinned"]
        try:
            for k, _ in entries(self.mappings, self.owner):
                if maps.svc.lookup(k) is None:
                    e = ep.decode_svc(k, b"\0" * ep.SVC_VALUE)
                    problems.append(f"bpf svc entry {e.proto} {_addr(e.host_ip, e.host_port)} is missing")
        finally:
            maps.close()
        return problems


def _addr(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def add(owner: str, mappings: list[Mapping], rewrites: RewriteSet | None = None) -> bool:
    """Publish ``owner``'s mappings in the shared set (attaching it first); False when there was
    nothing to rewrite (no TCP/UDP mapping)."""
    rw = rewrites or RewriteSet()
    want = entries(mappings, owner_hash(owner))
    if not want:
        return False
    with rw.lock():
        maps = rw.ensure()
        try:
            rw.refresh_local(maps)
            maps.svc.update_batch(want)
        finally:
            maps.close()
    return True


def cleanup(owner: str, rewrites: RewriteSet | None = None) -> list[str]:
    """Remove ``owner``'s svc entries; detach everything when none is left. Returns problems.

    Called by the publisher at teardown and by reconcile (``registry.cleanup``) after kill -9."""
    rw = rewrites or RewriteSet()
    if not os.path.isdir(rw.dir):
        return []
    try:
        with rw.lock():
            maps = rw.open_maps()
            if maps is None:
                return rw.detach_all()
            rw.remove_owner(maps, owner_hash(owner))
            errs = rw.release_if_unused(maps)
            maps.close()
            return errs
    except (BpfError, OSError) as e:
        return [f"bpf cleanup of {owner}: {str(e).splitlines()[0]}"]


def sweep(owners: set[str], rewrites: RewriteSet | None = None) -> list[str]:
    """Reconcile the shared set with the sandboxes that still exist (``owners``): remove the svc
    entries of any other owner (a sandbox killed with -9 whose teardown never ran), detach when
    none is left, and attach again programs someone detached while entries remain. Returns
    one line per repair or problem; quiet when all is in place."""
    rw = rewrites or RewriteSet()
    if not os.path.isdir(rw.dir):
        return []
    lines: list[str] = []
    try:
        with rw.lock():
            maps = rw.open_maps()
            if maps is None:
                return rw.detach_all()
            keep = {ep.owner_bytes(owner_hash(o)) for o in owners}
            at = ep.OWNER_AT
            present = {v[at : at + 8] for _, v in maps.svc.items_batch()}
            stale = {int.from_bytes(o, "little") for o in present - keep}
            for o in stale:
                n = rw.remove_owner(maps, o)
                lines.append(f"ebpf: removed {n} rewrite entries of a sandbox that is gone")
            released = rw.release_if_unused(maps)
            if maps.svc.fd < 0:  # released: nothing published any more
                return lines + released
            missing = rw.missing_links()
            if missing:
                rw.ensure().close()
                lines.append(f"ebpf: attached again {', '.join(missing)}")
            rw.refresh_local(maps)  # an address the host gained since: wildcard bindings answer on it
            maps.close()
    except (BpfError, OSError) as e:
        lines.append(f"ebpf sweep: {str(e).splitlines()[0]}")
    return lines
