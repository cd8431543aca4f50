"""Host sockets: who holds one (the kernel's socket tables joined with /proc/PID/fd), and the one
recipe by which portwright binds its own (``bind_socket``).

Used before publishing (to refuse a port another socket holds, and name its owner) and by
diagnostics. The tables come from sock_diag netlink (``ss``'s source: exact, and it reports
IPV6_V6ONLY) with /proc/net/{tcp,udp}[6] as the fallback. Both read the network namespace of the
calling *thread*, so diagnostics can read another namespace from a thread that has entered it.

``bind_socket`` is shared by host-port reservations (``publish.reserve``), the proxy's listeners
and the CNI holder, so that a port is held the same way whoever holds it. It is exclusive: UDP
sockets never set SO_REUSEADDR (on UDP it lets every other socket that sets it too bind the same
address and port, and take the datagrams); TCP sets it only to pass TIME_WAIT, which never lets
two listeners share a port. Neither sets SO_REUSEPORT. ``port_free`` tests a port with the same
options.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, replace

from ..model import IPAddress, address_text, bindings_clash
from .proc import argv_text, comm

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
    v6only: bool | None = None  # IPV6_V6ONLY of a v6 socket when sock_diag told us; None = unknown

    @property
    def accepts_v4(self) -> bool:
        """Does this socket take IPv4 traffic? (v4 sockets, and dual-stack ``::`` sockets)."""
        if self.ip.version == 4:
            return True
        return self.ip.is_unspecified and self.v6only is False

    @property
    def dual_stack(self) -> bool:
        """A v6 socket that takes IPv4 too; unknown IPV6_V6ONLY counts as off (Linux's default)."""
        return self.ip.version == 6 and self.v6only is not True

    @property
    def binding(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"

    def clashes(self, proto: str, ip: IPAddress, port: int, dual: bool = False) -> bool:
        """Would binding ip:port/proto (dual: a ``::`` socket with IPV6_V6ONLY off) clash with this one?"""
        return (
            self.proto == proto
            and self.port == port
            and bindings_clash(self.ip, ip, a_dual=self.dual_stack, b_dual=dual)
        )


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
    name = comm(pid)
    cmdline = argv_text(pid) if name is not None else None
    return None if name is None or cmdline is None else Process(pid, name, cmdline)


# ---- sock_diag netlink (linux/inet_diag.h, linux/sock_diag.h)
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_SKV6ONLY = 11
_TCP_STATE_LISTEN = 10
_TCP_STATE_CLOSE = 7  # an unconnected UDP socket
_NLMSG_HDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (48 bytes, zeroed)
_REQ = struct.Struct("=BBBxI48x")
# inet_diag_msg: family, state, timer, retrans, sport(be), dport(be), src[16], dst[16], if,
# cookie[2], expires, rqueue, wqueue, uid, inode
_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")


def parse_diag_messages(data: bytes) -> tuple[list[tuple[IPAddress, int, int, bool | None]], bool]:
    """Decode one recv() of a sock_diag dump: ([(ip, port, inode, v6only)], done)."""
    out: list[tuple[IPAddress, int, int, bool | None]] = []
    off = 0
    while off + _NLMSG_HDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, off)
        if length < _NLMSG_HDR.size:
            break
        body = data[off + _NLMSG_HDR.size : off + length]
        off += (length + 3) & ~3
        if mtype == NLMSG_DONE:
            return out, True
        if mtype == NLMSG_ERROR:
            code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else errno.EIO
            raise OSError(code, os.strerror(code))
        if mtype != SOCK_DIAG_BY_FAMILY or len(body) < _MSG.size:
            continue
        fam, _state, _t, _r, sport, _dport, src, _dst, _if, _ck, _e, _rq, _wq, _uid, inode = _MSG.unpack_from(
            body
        )
        port = int.from_bytes(sport, "big")
        ip: IPAddress = (
            ipaddress.IPv4Address(src[:4]) if fam == socket.AF_INET else ipaddress.IPv6Address(src)
        )
        v6only: bool | None = None
        aoff = _MSG.size
        while aoff + 4 <= len(body):
            alen, atype = struct.unpack_from("=HH", body, aoff)
            if alen < 4:
                break
            if atype == INET_DIAG_SKV6ONLY and alen >= 5:
                v6only = bool(body[aoff + 4])
            aoff += (alen + 3) & ~3
        out.append((ip, port, inode, v6only))
    return out, False


def diag_dump(proto: str, family: int) -> list[tuple[IPAddress, int, int, bool | None]]:
    """Listening TCP / unconnected UDP sockets of one family, by sock_diag in this thread's netns."""
    ipproto = socket.IPPROTO_TCP if proto == "tcp" else socket.IPPROTO_UDP
    states = 1 << (_TCP_STATE_LISTEN if proto == "tcp" else _TCP_STATE_CLOSE)
    req = _REQ.pack(family, ipproto, 0, states)
    hdr = _NLMSG_HDR.pack(_NLMSG_HDR.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as s:
        s.settimeout(5)
        s.sendto(hdr + req, (0, 0))
        out: list[tuple[IPAddress, int, int, bool | None]] = []
        while True:
            got, done = parse_diag_messages(s.recv(1 << 16))
            out.extend(got)
            if done:
                return out


def _proc_table(proto: str, suffix: str) -> list[tuple[IPAddress, int, int, bool | None]]:
    # thread-self: the table of this thread's namespace (/proc/net follows the thread-group leader).
    for base in ("/proc/thread-self/net", "/proc/net"):
        try:
            with open(f"{base}/{proto}{suffix}") as f:
                text = f.read()
        except OSError:
            continue
        return [(ip, port, inode, None) for ip, port, inode in parse_proc_net(text, proto)]
    return []


def raw_listeners(
    protos: tuple[str, ...] = ("tcp", "udp"),
) -> list[tuple[str, IPAddress, int, int, bool | None]]:
    """(proto, ip, port, inode, v6only) for every listener in this thread's namespace, no processes."""
    raw: list[tuple[str, IPAddress, int, int, bool | None]] = []
    for proto in protos:
        if proto not in ("tcp", "udp"):
            continue
        for fam, suffix in ((socket.AF_INET, ""), (socket.AF_INET6, "6")):
            try:
                rows = diag_dump(proto, fam)
            except OSError:  # no sock_diag (module absent, seccomp): the /proc text has the same rows
                rows = _proc_table(proto, suffix)
            raw.extend((proto, *r) for r in rows)
    return raw


def attach_processes(
    raw: list[tuple[str, IPAddress, int, int, bool | None]], by_inode: dict[int, list[int]] | None = None
) -> list[Listener]:
    """Join raw socket rows with the processes holding each inode (inodes are host-global)."""
    if by_inode is None:
        by_inode = socket_inodes_by_pid()
    out = []
    for proto, ip, port, inode, v6only in raw:
        procs = tuple(p for p in (process(pid) for pid in sorted(set(by_inode.get(inode, ())))) if p)
        out.append(Listener(proto, ip, port, inode, procs, v6only))
    return out


def listeners(protos: tuple[str, ...] = ("tcp", "udp"), with_processes: bool = True) -> list[Listener]:
    """Every listening TCP and bound UDP socket in this network namespace."""
    raw = raw_listeners(protos)
    if not with_processes:
        return [Listener(p, ip, port, inode, (), v6) for p, ip, port, inode, v6 in raw]
    return attach_processes(raw)


def with_processes(lns: list[Listener], by_inode: dict[int, list[int]]) -> list[Listener]:
    """Fill in the holders of listeners that were read without them."""
    return [
        replace(
            ln,
            processes=tuple(
                p for p in (process(pid) for pid in sorted(set(by_inode.get(ln.inode, ())))) if p
            ),
        )
        for ln in lns
    ]


def holders(proto: str, port: int, ip: IPAddress | None = None, dual: bool = False) -> list[Listener]:
    """The listeners that hold proto/port: all of them, or those a binding on ip would clash with."""
    return [
        ln
        for ln in listeners((proto,))
        if ln.port == port and (ip is None or ln.clashes(proto, ip, port, dual))
    ]


def describe_owner(proto: str, port: int, ip: IPAddress | None = None, dual: bool = False) -> str:
    """A short human description of who holds proto/port, e.g. ``pid 812 (nginx: nginx -g ...)``."""
    for ln in holders(proto, port, ip, dual):
        return describe_listener(ln)
    return "another socket (owner not visible)"


def describe_listener(ln: Listener) -> str:
    """``pid 812 (nginx: nginx -g ...) on 0.0.0.0:80``, or the socket alone when no process shows."""
    if ln.processes:
        p = ln.processes[0]
        cmd = p.cmdline if len(p.cmdline) <= 80 else p.cmdline[:77] + "..."
        return f"pid {p.pid} ({p.comm}: {cmd}) on {ln.binding}"
    return f"a socket on {ln.binding} (inode {ln.inode}, no visible process: kernel or other namespace)"


#: Listen backlog of bound stream sockets; the kernel caps it at net.core.somaxconn.
BACKLOG = 4096


def _new_socket(proto: str, fam: int) -> socket.socket:
    if proto == "udp":
        return socket.socket(fam, socket.SOCK_DGRAM)
    if proto == "sctp":
        try:
            return socket.socket(fam, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
        except OSError as e:
            if e.errno == errno.EPROTONOSUPPORT:  # the sctp module is not loaded (or not built)
                why = f"{e.strerror}: this kernel has no SCTP; load it with 'modprobe sctp'"
                raise OSError(e.errno, why) from None
            raise
    return socket.socket(fam, socket.SOCK_STREAM)


def _set_bind_options(s: socket.socket, proto: str, v6only: bool, fam: int) -> None:
    """SO_REUSEADDR for stream sockets only (see the module docstring), IPV6_V6ONLY as asked."""
    if proto != "udp":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:  # not s.family: that builds an enum, 10,000 times for a range (#11)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))


def bind_socket(
    proto: str, ip: IPAddress, port: int, listen: bool = True, v6only: bool = True
) -> socket.socket:
    """A socket bound to ip:port/proto, listening for stream protocols. An IPv6 socket is
    IPV6_V6ONLY unless v6only is False: then ``[::]:P`` holds the port in both families.

    Exclusive: while it is open (and listening, for TCP), no other socket can bind a clashing
    address (see the module docstring). Raises OSError (EADDRINUSE etc.) for the caller to turn
    into PortInUse with the owner.
    """
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    s = _new_socket(proto, fam)
    try:
        _set_bind_options(s, proto, v6only, fam)
        s.bind((address_text(ip), port))
        if listen and proto != "udp":
            s.listen(BACKLOG)
    except BaseException:
        s.close()
        raise
    return s


def port_free(proto: str, ip: IPAddress, port: int) -> bool:
    """Can we bind ip:port/proto right now? Tries a real bind (the kernel is the judge), with
    ``bind_socket``'s options: on UDP without SO_REUSEADDR, which would let the test bind share
    the port with a holder that set it too."""
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        s = _new_socket(proto, fam)
    except OSError:
        return True
    try:
        _set_bind_options(s, proto, True, fam)
        s.bind((str(ip), port))
        if proto == "tcp":
            s.listen(1)
        return True
    except OSError:
        return False
    finally:
        s.close()
