"""The cgroup BPF programs of host-remap, generated from a sandbox's mappings. Pure: no syscalls.

A host-network sandbox's CMD runs in a cgroup of its own; these ``BPF_PROG_TYPE_CGROUP_SOCK_ADDR``
programs, attached to that cgroup only, make its sockets behave as if it had its own ports:

* **bind4/bind6** rewrite a bind to INNER into HOST (and the mapping's host address when it names
  one: ``-p 127.0.0.1:8080:80`` binds 127.0.0.1:8080). Any other bind is *confined*: a TCP or UDP
  port that is neither 0, in the ephemeral range, nor ``--expose``d is refused (return 0: EPERM).
* **connect4/6, sendmsg4/6** rewrite CMD's own traffic to 127.0.0.1:INNER / [::1]:INNER into the
  host port, so a server reaches itself by the port it was configured with.
* **getsockname4/6** show HOST as INNER; **getpeername4/6 and recvmsg4/6** show a peer that
  connect rewrote as the address CMD asked for (UDP replies then come "from" INNER).

Each program is a flat list of rewrite rules (``Rewrite``): match protocol, port and optionally
address; write port and optionally address; first match wins; every program but bind returns 1
(allow). A v6 socket with no IPv6 mapping for its port uses the IPv4 one as ``::ffff:a.b.c.d``.
Context offsets are struct bpf_sock_addr's (kernel.bpf.consts, cited to include/uapi/linux/bpf.h).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ..errors import BadInput
from ..kernel.bpf import asm
from ..kernel.bpf import consts as c
from ..model import Mapping

IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
LOOP4 = ipaddress.IPv4Address("127.0.0.1").packed
LOOP6 = ipaddress.IPv6Address("::1").packed
#: cgroup sock_addr return codes (kernel/bpf/cgroup.c): 1 lets the call go on, 0 fails it with EPERM.
ALLOW, REFUSE = 1, 0

# Registers: R6 the context, R7 the port in host byte order, R8 the socket's protocol.
_CTX, _PORT, _PROTO, _TMP = c.R6, c.R7, c.R8, c.R2


class Rewrite(NamedTuple):
    """Match (protocol, port[, address]); write port[, address]. Ports in host byte order,
    addresses packed (4 or 16 bytes, network order)."""

    proto: int
    port: int
    new_port: int
    ip: bytes | None = None  # None: any address
    new_ip: bytes | None = None  # None: keep the address


class Confinement(NamedTuple):
    """What a bind with no mapping may use: port 0, the ephemeral range, and exposed ranges."""

    ephemeral: tuple[int, int]
    exposed: tuple[tuple[int, int, int], ...] = ()  # (IPPROTO_*, first, last)


def _mapped(ip: bytes) -> bytes:
    """An IPv4 address as IPv6 ``::ffff:a.b.c.d``, which a dual-stack v6 socket binds or reaches."""
    return bytes(10) + b"\xff\xff" + ip


def check_unique(mappings: Iterable[Mapping]) -> None:
    """One bind() goes to one place: refuse two host ports for one container port and family."""
    seen: dict[tuple[int, str, int], Mapping] = {}
    for m in mappings:
        key = (m.family, m.proto, m.container_port)
        other = seen.setdefault(key, m)
        if other.host_port != m.host_port or other.host_ip != m.host_ip:
            raise BadInput(
                f"-p {m.host_binding()}:{m.container_port}/{m.proto}: container port "
                f"{m.container_port} is already published as {other.host_binding()}; with "
                "--network host a bind() is remapped to one host port, so publish it once"
            )


def _family(mappings: Sequence[Mapping], version: int) -> list[Mapping]:
    return [m for m in mappings if m.family == version and m.proto in IPPROTO]


def _v4_only(mappings: Sequence[Mapping]) -> list[Mapping]:
    """IPv4 mappings whose (protocol, container port) has no IPv6 mapping."""
    v6 = {(m.proto, m.container_port) for m in _family(mappings, 6)}
    return [m for m in _family(mappings, 4) if (m.proto, m.container_port) not in v6]


def bind_rewrites(mappings: Sequence[Mapping], version: int) -> list[Rewrite]:
    """INNER -> HOST for a bind of this family, with the mapping's host address when it names one."""
    out = [
        Rewrite(
            IPPROTO[m.proto], m.container_port, m.host_port, None, None if m.wildcard else m.host_ip.packed
        )
        for m in _family(mappings, version)
    ]
    if version == 6:
        out += [
            Rewrite(IPPROTO[m.proto], m.container_port, m.host_port, None, _mapped(m.host_ip.packed))
            for m in _v4_only(mappings)
        ]
    return _dedupe(out)


def _reach(m: Mapping, loop: bytes) -> bytes | None:
    """The address CMD's connection to loopback:INNER must go to: None keeps loopback."""
    if m.wildcard or m.host_ip.packed == loop:
        return None
    return m.host_ip.packed


def connect_rewrites(
    mappings: Sequence[Mapping], version: int, protos: tuple[str, ...] = ("tcp", "udp")
) -> list[Rewrite]:
    """loopback:INNER -> HOST (at the mapping's address when it names one), for connect/sendmsg."""
    loop = LOOP4 if version == 4 else LOOP6
    out = [
        Rewrite(IPPROTO[m.proto], m.container_port, m.host_port, loop, _reach(m, loop))
        for m in _family(mappings, version)
        if m.proto in protos
    ]
    if version == 6:
        for m in _v4_only(mappings):
            if m.proto in protos:
                dest = _mapped(LOOP4 if m.wildcard else m.host_ip.packed)
                out.append(Rewrite(IPPROTO[m.proto], m.container_port, m.host_port, loop, dest))
    return _dedupe(out)


def peer_rewrites(
    mappings: Sequence[Mapping], version: int, protos: tuple[str, ...] = ("tcp", "udp")
) -> list[Rewrite]:
    """The reverse of ``connect_rewrites``: a peer at HOST is shown as loopback:INNER."""
    loop = LOOP4 if version == 4 else LOOP6
    return _dedupe(
        [
            Rewrite(r.proto, r.new_port, r.port, r.new_ip or loop, None if r.new_ip is None else loop)
            for r in connect_rewrites(mappings, version, protos)
        ]
    )


def sockname_rewrites(mappings: Sequence[Mapping], version: int) -> list[Rewrite]:
    """A local port HOST is shown as INNER (any address)."""
    ms = _family(mappings, version) + (_v4_only(mappings) if version == 6 else [])
    return _dedupe([Rewrite(IPPROTO[m.proto], m.host_port, m.container_port) for m in ms])


def _dedupe(rules: list[Rewrite]) -> list[Rewrite]:
    return list(dict.fromkeys(rules))


# ------------------------------------------------------------------------------------------------
# Code generation
# ------------------------------------------------------------------------------------------------


def _ip_offset(version: int) -> int:
    return c.SA_USER_IP4 if version == 4 else c.SA_USER_IP6


def _words(ip: bytes) -> list[int]:
    """A packed address as the u32 words a 32-bit load of the context reads (little-endian host)."""
    return [int.from_bytes(ip[i : i + 4], "little") for i in range(0, len(ip), 4)]


def _rule(r: Rewrite, version: int, n: int) -> list[asm.Item]:
    """if protocol, port (and address) match: write the new port (and address), then allow."""
    nxt = f"next{n}"
    out: list[asm.Item] = [
        asm.jmp32_imm("jne", _PROTO, r.proto, nxt),
        asm.jmp32_imm("jne", _PORT, r.port, nxt),
    ]
    base = _ip_offset(version)
    if r.ip is not None:
        for i, word in enumerate(_words(r.ip)):
            out += [asm.ldx_w(_TMP, _CTX, base + 4 * i), asm.jmp32_imm("jne", _TMP, word, nxt)]
    if r.new_ip is not None:
        for i, word in enumerate(_words(r.new_ip)):
            out += [asm.mov32_imm(_TMP, word), asm.stx_w(_CTX, base + 4 * i, _TMP)]
    out += [
        asm.mov32_imm(_TMP, socket.htons(r.new_port)),
        asm.stx_w(_CTX, c.SA_USER_PORT, _TMP),
        asm.ja("allow"),
        asm.label(nxt),
    ]
    return out


def _confine(conf: Confinement) -> list[asm.Item]:
    """Allow port 0, non-TCP/UDP sockets, the ephemeral range and exposed ranges; refuse the rest."""
    lo, hi = conf.ephemeral
    out: list[asm.Item] = [
        asm.jmp32_imm("jeq", _PORT, 0, "allow"),
        asm.jmp32_imm("jeq", _PROTO, socket.IPPROTO_TCP, "confined"),
        asm.jmp32_imm("jne", _PROTO, socket.IPPROTO_UDP, "allow"),
        asm.label("confined"),
        asm.jmp32_imm("jlt", _PORT, lo, "not_ephemeral"),
        asm.jmp32_imm("jle", _PORT, hi, "allow"),
        asm.label("not_ephemeral"),
    ]
    for n, (proto, first, last) in enumerate(conf.exposed):
        skip = f"exposed{n}"
        out += [
            asm.jmp32_imm("jne", _PROTO, proto, skip),
            asm.jmp32_imm("jlt", _PORT, first, skip),
            asm.jmp32_imm("jle", _PORT, last, "allow"),
            asm.label(skip),
        ]
    return [*out, asm.mov64_imm(c.R0, REFUSE), asm.exit()]


def program(version: int, rules: Sequence[Rewrite], confine: Confinement | None = None) -> list[asm.Item]:
    """One sock_addr program: the rules in order, then (bind only) the confinement."""
    out: list[asm.Item] = [
        asm.mov64_reg(_CTX, c.R1),
        asm.ldx_w(_PORT, _CTX, c.SA_USER_PORT),
        asm.endian(_PORT, 16, big=True),  # network to host byte order (a swap on little-endian)
        asm.ldx_w(_PROTO, _CTX, c.SA_PROTOCOL),
    ]
    for n, r in enumerate(rules):
        out += _rule(r, version, n)
    out += _confine(confine) if confine is not None else [asm.ja("allow")]
    return [*out, asm.label("allow"), asm.mov64_imm(c.R0, ALLOW), asm.exit()]


class Plan(NamedTuple):
    """One program to load and attach: the hook (enum bpf_attach_type) and its instructions."""

    hook: int
    name: str  # the kernel's program name (at most 15 characters)
    insns: tuple[asm.Item, ...]


def plan(mappings: Sequence[Mapping], confine: Confinement) -> list[Plan]:
    """Every program a sandbox needs. bind4/6 always (they confine); the rest only when there is
    something to rewrite."""
    check_unique(mappings)
    out = []
    for v in (4, 6):
        hooks = [
            (c.BPF_CGROUP_INET4_BIND if v == 4 else c.BPF_CGROUP_INET6_BIND, "bind", bind_rewrites(mappings, v)),
            (c.BPF_CGROUP_INET4_CONNECT if v == 4 else c.BPF_CGROUP_INET6_CONNECT, "connect", connect_rewrites(mappings, v)),
            (c.BPF_CGROUP_UDP4_SENDMSG if v == 4 else c.BPF_CGROUP_UDP6_SENDMSG, "sendmsg", connect_rewrites(mappings, v, ("udp",))),
            (c.BPF_CGROUP_UDP4_RECVMSG if v == 4 else c.BPF_CGROUP_UDP6_RECVMSG, "recvmsg", peer_rewrites(mappings, v, ("udp",))),
            (c.BPF_CGROUP_INET4_GETSOCKNAME if v == 4 else c.BPF_CGROUP_INET6_GETSOCKNAME, "sockname", sockname_rewrites(mappings, v)),
            (c.BPF_CGROUP_INET4_GETPEERNAME if v == 4 else c.BPF_CGROUP_INET6_GETPEERNAME, "peername", peer_rewrites(mappings, v)),
        ]  # fmt: skip
        for hook, what, rules in hooks:
            if what == "bind":
                out.append(Plan(hook, f"pw_bind{v}", tuple(program(v, rules, confine))))
            elif rules:
                out.append(Plan(hook, f"pw_{what}{v}", tuple(program(v, rules))))
    return out
