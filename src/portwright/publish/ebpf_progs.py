"""The connect-time rewrite of publish mode ``ebpf``: map layouts and the cgroup programs. Pure.

Four *forward* programs (connect4/6, sendmsg4/6) look the destination a client dialled up in the
``svc`` map and, when it is a published binding, rewrite it to the sandbox's address and port.
Four *reverse* programs (getpeername4/6, recvmsg4/6) show the client the address it dialled again.
The programs are shared by every sandbox of one state directory and attached at the cgroup2 root,
so they run for every process on the host; they therefore rewrite only when all of these hold:

* the socket lives in the host's network namespace (``bpf_get_netns_cookie(ctx)`` equals the
  cookie baked in at load time, read with ``SO_NETNS_COOKIE``): a sandbox's own loopback, and
  every other namespace, is never touched;
* the protocol is TCP or UDP and (protocol, address, port) is in ``svc`` — the exact address
  first, then the wildcard of its family when the address is the host's own (127.0.0.0/8, ::1,
  or an address in the ``local`` map that the publisher fills with the host's addresses);
* the socket is not bound to a loopback source (127.0.0.0/8, ::1): such a source cannot leave
  through the bridge, so that client keeps the NAT path (masquerade) as in ``nat`` mode.

Each forward rewrite records (socket cookie, sandbox address, port) -> dialled address in the
LRU map ``rev``; the reverse programs look their socket's peer up there. IPv4 is kept in ``svc``
and ``rev`` as ``::ffff:a.b.c.d``, so one map serves both families and a dual-stack socket that
dials a v4-mapped address finds the IPv4 binding. connect6 may rewrite a v6 socket to a
v4-mapped sandbox address (``localhost`` -> ``::1`` -> an IPv4-only server works, TCP and
connected UDP); sendmsg6 may not (the kernel refuses with ENOTSUPP, 524), so an unconnected UDP
datagram to ``[::1]:P`` for an IPv4 sandbox is left alone and reaches the ``::1`` relay that the
NAT half keeps for exactly that case. Offsets and helpers: kernel.bpf.consts (include/uapi/linux/bpf.h).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from ..kernel.bpf import asm
from ..kernel.bpf import consts as c

IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
#: cgroup sock_addr return code: 1 lets the call go on (kernel/bpf/cgroup.c); we never refuse.
ALLOW = 1

# Map layouts (little-endian host; addresses and ports in network byte order).
#: svc key: ip[16] | port_be u16 | proto u8 | pad u8
SVC_KEY = 20
#: svc value: ip[16] | port_be u16 | pad u16 | pad u32 | owner u64 (who published it)
SVC_VALUE = 32
#: local key: ip[16]; value u32 1
LOCAL_KEY, LOCAL_VALUE = 16, 4
#: rev key: socket cookie u64 | sandbox ip[16] | port_be u16 | pad u16 | pad u32
REV_KEY = 32
#: rev value: dialled ip[16] | port_be u16 | pad u16
REV_VALUE = 20
#: Sizes: svc holds every published binding of one state dir (10,000 ports x 2 families x
#: protos fits); rev is an LRU of live rewritten sockets (old ones fall out by themselves).
SVC_MAX, LOCAL_MAX, REV_MAX = 65536, 1024, 65536

MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"
#: The third u32 of a v4-mapped address as the CPU loads it (bytes 00 00 ff ff, little-endian).
MAPPED_WORD = 0xFFFF0000
#: ::1's last u32 as loaded (bytes 00 00 00 01).
LOOP6_WORD = 0x01000000

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip16(ip: IPAddress) -> bytes:
    """An address as the maps hold it: IPv6 as is, IPv4 as ::ffff:a.b.c.d."""
    return MAPPED_PREFIX + ip.packed if ip.version == 4 else ip.packed


def svc_key(proto: str, ip: IPAddress, port: int) -> bytes:
    return ip16(ip) + struct.pack(">H", port) + bytes([IPPROTO[proto], 0])


def svc_value(ip: IPAddress, port: int, owner: int) -> bytes:
    return ip16(ip) + struct.pack(">H", port) + b"\0" * 6 + struct.pack("<Q", owner)


@dataclass(frozen=True, slots=True)
class SvcEntry:
    proto: str
    host_ip: IPAddress
    host_port: int
    ip: IPAddress
    port: int
    owner: int


#: Where a raw svc value keeps its owner tag (the layout above): a u64, little-endian.
OWNER_AT = 24


def entry_owner(value: bytes) -> int:
    """The owner tag of a raw svc value (without decoding the rest)."""
    return int(struct.unpack_from("<Q", value, OWNER_AT)[0])


def owner_bytes(owner: int) -> bytes:
    """``owner`` as the 8 bytes a raw svc value holds at ``OWNER_AT``: comparing bytes, 40,000
    entries of a 10,000-port sandbox are sorted by owner with no decoding (#11)."""
    return owner.to_bytes(8, "little")


def _unmap(raw: bytes) -> IPAddress:
    a = ipaddress.IPv6Address(raw)
    return a.ipv4_mapped or a


def decode_svc(key: bytes, value: bytes) -> SvcEntry:
    """A raw svc entry back as addresses (IPv4 unmapped; the v4 wildcard as 0.0.0.0)."""
    proto = {v: k for k, v in IPPROTO.items()}.get(key[18], str(key[18]))
    return SvcEntry(
        proto,
        _unmap(key[:16]),
        struct.unpack(">H", key[16:18])[0],
        _unmap(value[:16]),
        struct.unpack(">H", value[16:18])[0],
        struct.unpack("<Q", value[24:32])[0],
    )


@dataclass(frozen=True, slots=True)
class MapFds:
    svc: int
    rev: int
    local: int


# Stack frame (offsets from R10): the svc key, the rev key and the rev value.
_KEY, _RKEY, _RVAL = -24, -64, -88
# Registers: R6 ctx, R7 protocol, R8 svc value, R9 dialled port.
_CTX, _PROTO, _VAL, _PORT = c.R6, c.R7, c.R8, c.R9


def _allow_tail() -> list[asm.Item]:
    return [asm.label("allow"), asm.mov64_imm(c.R0, ALLOW), asm.exit()]


def _guards(family: int, udp_only: bool, netns_cookie: int) -> list[asm.Item]:
    """TCP/UDP only, the host's namespace only, no loopback-bound socket."""
    out: list[asm.Item] = [asm.mov64_reg(_CTX, c.R1), asm.ldx_w(_PROTO, _CTX, c.SA_PROTOCOL)]
    if not udp_only:
        out.append(asm.jmp_imm("jeq", _PROTO, socket.IPPROTO_TCP, "proto_ok"))
    out += [
        asm.jmp_imm("jne", _PROTO, socket.IPPROTO_UDP, "allow"),
        asm.label("proto_ok"),
        asm.mov64_reg(c.R1, _CTX),
        asm.call(c.BPF_FUNC_get_netns_cookie),
        *asm.ld_imm64(c.R2, netns_cookie),
        asm.jmp_reg("jne", c.R0, c.R2, "allow"),
        asm.ldx_dw(c.R2, _CTX, c.SA_SK),
    ]
    if family == 4:
        out += [asm.ldx_w(c.R3, c.R2, c.SK_SRC_IP4), asm.alu64_imm("and", c.R3, 0xFF)]
        out.append(asm.jmp_imm("jeq", c.R3, 127, "allow"))
        return out
    out += [asm.ldx_w(c.R3 + i, c.R2, c.SK_SRC_IP6 + 4 * i) for i in range(3)]  # R3 R4 R5
    out += [
        asm.ldx_w(c.R2, c.R2, c.SK_SRC_IP6 + 12),
        asm.alu64_reg("or", c.R3, c.R4),
        asm.jmp_imm("jne", c.R3, 0, "src_ok"),  # not ::/96 nor ::ffff:0:0/96
        asm.jmp32_imm("jne", c.R5, 0, "src_mapped"),
        asm.jmp32_imm("jeq", c.R2, LOOP6_WORD, "allow"),  # bound to ::1
        asm.ja("src_ok"),
        asm.label("src_mapped"),
        asm.jmp32_imm("jne", c.R5, MAPPED_WORD, "src_ok"),
        asm.alu64_imm("and", c.R2, 0xFF),
        asm.jmp_imm("jeq", c.R2, 127, "allow"),  # bound to ::ffff:127.x
        asm.label("src_ok"),
    ]
    return out


def _dialled_to_stack(family: int, base: int) -> list[asm.Item]:
    """The dialled address as 16 map bytes at R10+base."""
    if family == 4:
        return [
            asm.st_w(c.R10, base, 0),
            asm.st_w(c.R10, base + 4, 0),
            asm.st_w(c.R10, base + 8, MAPPED_WORD),
            asm.ldx_w(c.R2, _CTX, c.SA_USER_IP4),
            asm.stx_w(c.R10, base + 12, c.R2),
        ]
    out: list[asm.Item] = []
    for i in range(4):
        out += [asm.ldx_w(c.R2, _CTX, c.SA_USER_IP6 + 4 * i), asm.stx_w(c.R10, base + 4 * i, c.R2)]
    return out


def _lookup(map_fd: int, key: int) -> list[asm.Item]:
    return [
        *asm.ld_map_fd(c.R1, map_fd),
        asm.mov64_reg(c.R2, c.R10),
        asm.alu64_imm("add", c.R2, key),
        asm.call(c.BPF_FUNC_map_lookup_elem),
    ]


def _find(family: int, fds: MapFds) -> list[asm.Item]:
    """R8 = the svc value for the dialled binding, exact address first, then the wildcard."""
    k = _KEY
    out: list[asm.Item] = [
        *_dialled_to_stack(family, k),
        asm.ldx_w(_PORT, _CTX, c.SA_USER_PORT),
        asm.mov64_reg(c.R2, _PROTO),
        asm.alu64_imm("lsh", c.R2, 16),
        asm.alu64_reg("or", c.R2, _PORT),
        asm.stx_w(c.R10, k + 16, c.R2),
        *_lookup(fds.svc, k),
        asm.jmp_imm("jne", c.R0, 0, "found"),
        # Not a specific binding: a wildcard one serves it when the address is the host's own.
        asm.ldx_w(c.R2, c.R10, k),
        asm.ldx_w(c.R3, c.R10, k + 4),
        asm.alu64_reg("or", c.R2, c.R3),
        asm.ldx_w(c.R3, c.R10, k + 8),
        asm.ldx_w(c.R4, c.R10, k + 12),
        asm.jmp_imm("jne", c.R2, 0, "check_local"),
        asm.jmp32_imm("jne", c.R3, MAPPED_WORD, "native6"),
        asm.alu64_imm("and", c.R4, 0xFF),
        asm.jmp_imm("jeq", c.R4, 127, "wild4"),  # 127.0.0.0/8
        asm.ja("check_local"),
        asm.label("native6"),
        asm.jmp32_imm("jne", c.R3, 0, "check_local"),
        asm.jmp32_imm("jeq", c.R4, LOOP6_WORD, "wild6"),  # ::1
        asm.label("check_local"),
        *_lookup(fds.local, k),
        asm.jmp_imm("jeq", c.R0, 0, "allow"),
        asm.ldx_w(c.R3, c.R10, k + 8),
        asm.jmp32_imm("jeq", c.R3, MAPPED_WORD, "wild4"),
        asm.label("wild6"),
        asm.st_w(c.R10, k, 0),
        asm.st_w(c.R10, k + 4, 0),
        asm.st_w(c.R10, k + 8, 0),
        asm.label("wild4"),  # ::ffff:0.0.0.0 keeps the mapped prefix; :: has none
        asm.st_w(c.R10, k + 12, 0),
        *_lookup(fds.svc, k),
        asm.jmp_imm("jeq", c.R0, 0, "allow"),
        asm.label("found"),
        asm.mov64_reg(_VAL, c.R0),
    ]
    return out


def _record(family: int, fds: MapFds) -> list[asm.Item]:
    """rev[(cookie, sandbox ip, port)] = (dialled ip, port), for getpeername and recvmsg."""
    out: list[asm.Item] = [
        asm.mov64_reg(c.R1, _CTX),
        asm.call(c.BPF_FUNC_get_socket_cookie),
        asm.stx_dw(c.R10, _RKEY, c.R0),
    ]
    for i in range(5):  # the sandbox ip[16] and the port word (pad is zero in svc)
        out += [asm.ldx_w(c.R2, _VAL, 4 * i), asm.stx_w(c.R10, _RKEY + 8 + 4 * i, c.R2)]
    out += [asm.st_w(c.R10, _RKEY + 28, 0), *_dialled_to_stack(family, _RVAL)]
    out += [
        asm.stx_w(c.R10, _RVAL + 16, _PORT),
        *asm.ld_map_fd(c.R1, fds.rev),
        asm.mov64_reg(c.R2, c.R10),
        asm.alu64_imm("add", c.R2, _RKEY),
        asm.mov64_reg(c.R3, c.R10),
        asm.alu64_imm("add", c.R3, _RVAL),
        asm.mov64_imm(c.R4, c.BPF_ANY),
        asm.call(c.BPF_FUNC_map_update_elem),
    ]
    return out


def _write_back(family: int, src: int) -> list[asm.Item]:
    """ctx's user address and port = the map value at register src (ip[16] then the port word)."""
    if family == 4:
        out: list[asm.Item] = [asm.ldx_w(c.R2, src, 12), asm.stx_w(_CTX, c.SA_USER_IP4, c.R2)]
    else:
        out = []
        for i in range(4):
            out += [asm.ldx_w(c.R2, src, 4 * i), asm.stx_w(_CTX, c.SA_USER_IP6 + 4 * i, c.R2)]
    return [*out, asm.ldx_w(c.R2, src, 16), asm.stx_w(_CTX, c.SA_USER_PORT, c.R2)]


def forward(family: int, hook: str, fds: MapFds, netns_cookie: int) -> bytes:
    """connect4/6 (hook "connect") or sendmsg4/6 (hook "sendmsg")."""
    prog: list[asm.Item] = [*_guards(family, hook == "sendmsg", netns_cookie), *_find(family, fds)]
    if family == 6 and hook == "sendmsg":
        # An unconnected v6 datagram may not be rewritten to a v4-mapped address (ENOTSUPP):
        # leave it to the ::1 relay.
        prog += [asm.ldx_w(c.R2, _VAL, 8), asm.jmp32_imm("jeq", c.R2, MAPPED_WORD, "allow")]
    prog += [*_record(family, fds), *_write_back(family, _VAL), *_allow_tail()]
    return asm.assemble(prog)


def reverse(family: int, fds: MapFds) -> bytes:
    """getpeername4/6 and recvmsg4/6: a peer recorded in rev is shown as the dialled address."""
    prog: list[asm.Item] = [
        asm.mov64_reg(_CTX, c.R1),
        asm.call(c.BPF_FUNC_get_socket_cookie),
        asm.stx_dw(c.R10, _RKEY, c.R0),
        *_dialled_to_stack(family, _RKEY + 8),
        asm.ldx_w(c.R2, _CTX, c.SA_USER_PORT),
        asm.stx_w(c.R10, _RKEY + 24, c.R2),
        asm.st_w(c.R10, _RKEY + 28, 0),
        *_lookup(fds.rev, _RKEY),
        asm.jmp_imm("jeq", c.R0, 0, "allow"),
        *_write_back(family, c.R0),
        *_allow_tail(),
    ]
    return asm.assemble(prog)


#: (pin name, attach type, family, builder kind) of every program of the set.
PROGRAMS: tuple[tuple[str, int, int, str], ...] = (
    ("connect4", c.BPF_CGROUP_INET4_CONNECT, 4, "connect"),
    ("connect6", c.BPF_CGROUP_INET6_CONNECT, 6, "connect"),
    ("sendmsg4", c.BPF_CGROUP_UDP4_SENDMSG, 4, "sendmsg"),
    ("sendmsg6", c.BPF_CGROUP_UDP6_SENDMSG, 6, "sendmsg"),
    ("recvmsg4", c.BPF_CGROUP_UDP4_RECVMSG, 4, "reverse"),
    ("recvmsg6", c.BPF_CGROUP_UDP6_RECVMSG, 6, "reverse"),
    ("getpeername4", c.BPF_CGROUP_INET4_GETPEERNAME, 4, "reverse"),
    ("getpeername6", c.BPF_CGROUP_INET6_GETPEERNAME, 6, "reverse"),
)


def build(kind: str, family: int, fds: MapFds, netns_cookie: int) -> bytes:
    return reverse(family, fds) if kind == "reverse" else forward(family, kind, fds, netns_cookie)
