"""Who holds a socket: the kernel's socket tables (/proc/net/*) joined with /proc/PID/fd.

Used before publishing (to name the owner of a port that is taken) and by diagnostics. Reads
the socket tables of the calling thread's network namespace.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from ..model import IPAddress

TCP_LISTEN = "0A"  # include/net/tcp_states.h: TCP_LISTEN == 10
UDP_UNCONN = "07"  # an unconnected (bound) UDP socket shows TCP_CLOSE == 7


@dataclass(frozen=True, slots=True)
class Process:
    pid: int
    comm: str
    cmdline: str


@dataclass(frozen=True, slots=True)
class Listener:
    proto: str  # tcp | udp
    ip: IPAddress
    port: int
    inode: int
    processes: tuple[Process, ...] = ()

    @property
    def binding(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


def _decode_addr(hexaddr: str) -> tuple[IPAddress, int]:
    addr, port = hexaddr.split(":")
    raw = bytes.fromhex(addr)
    if len(raw) == 4:
        return ipaddress.IPv4Address(struct.unpack("<I", raw)[0]), int(port, 16)
    # IPv6 is stored as four host-endian 32-bit words.
    words = struct.unpack("<4I", raw)
    return ipaddress.IPv6Address(struct.pack(">4I", *words)), int(port, 16)


def parse_proc_net(text: str, proto: str) -> list[tuple[IPAddress, int, int]]:
    """(local ip, local port, inode) of listening TCP / bound UDP sockets in one /proc/net table."""
    want = TCP_LISTEN if proto == "tcp" else UDP_UNCONN
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10 or f[3] != want:
            continue
        ip, port = _decode_addr(f[1])
        out.append((ip, port, int(f[9])))
    return out


def socket_inodes_by_pid() -> dict[int, list[int]]:
    """socket inode -> pids holding it, from /proc/*/fd (needs root to see every process)."""
    owners: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners.setdefault(int(target[8:-1]), []).append(pid)
    return owners


def process(pid: int) -> Process | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        with open(f"/proc/{pid}/cmdline", "rb") as fb:
            cmdline = fb.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    return Process(pid, comm, cmdline)


def listeners(protos: tuple[str, ...] = ("tcp", "udp"), with_processes: bool = True) -> list[Listener]:
    """Every listening TCP and bound UDP socket in this network namespace."""
    raw: list[tuple[str, IPAddress, int, int]] = []
    for proto in protos:
        for suffix in ("", "6"):
            try:
                with open(f"/proc/net/{proto}{suffix}") as f:
                    text = f.read()
            except OSError:
                continue
            raw.extend((proto, ip, port, inode) for ip, port, inode in parse_proc_net(text, proto))
    by_inode = socket_inodes_by_pid() if with_processes else {}
    out = []
    for proto, ip, port, inode in raw:
        procs = tuple(p for p in (process(pid) for pid in sorted(set(by_inode.get(inode, ())))) if p)
        out.append(Listener(proto, ip, port, inode, procs))
    return out


def overlaps(a: IPAddress, b: IPAddress) -> bool:
    """Would binding a and b on the same port clash? (wildcards clash with their family; a
    dual-stack :: socket also clashes with IPv4.)"""
    if a == b:
        return True
    if a.is_unspecified and (a.version == b.version or a.version == 6):
        return True
    if b.is_unspecified and (a.version == b.version or b.version == 6):
        return True
    return False


def holders(proto: str, port: int, ip: IPAddress | None = None) -> list[Listener]:
    return [ln for ln in listeners((proto,)) if ln.port == port and (ip is None or overlaps(ln.ip, ip))]


def describe_owner(proto: str, port: int, ip: IPAddress | None = None) -> str:
    """A short human description of who holds proto/port, e.g. ``pid 812 (nginx: nginx -g ...)``."""
    for ln in holders(proto, port, ip):
        if ln.processes:
            p = ln.processes[0]
            cmd = p.cmdline if len(p.cmdline) <= 80 else p.cmdline[:77] + "..."
            return f"pid {p.pid} ({p.comm}: {cmd}) on {ln.binding}"
        return f"a socket on {ln.binding} (inode {ln.inode}, no visible process: kernel or other namespace)"
    return "another socket (owner not visible)"


def port_free(proto: str, ip: IPAddress, port: int) -> bool:
    """Can we bind ip:port/proto right now? Tries a real bind (the kernel is the judge)."""
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    typ = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    if proto == "sctp":
        typ, sproto = socket.SOCK_STREAM, socket.IPPROTO_SCTP
    else:
        sproto = 0
    try:
        s = socket.socket(fam, typ, sproto)
    except OSError:
        return True
    try:
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((str(ip), port))
        if proto == "tcp":
            s.listen(1)
        return True
    except OSError:
        return False
    finally:
        s.close()
