"""host-remap's program generators: the rules planned from mappings, and the assembled programs run
on a tiny interpreter of the instructions they use (no root, no kernel)."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from portwright.errors import BadInput
from portwright.kernel.bpf import asm
from portwright.kernel.bpf import consts as c
from portwright.model import ANY4, ANY6, Mapping
from portwright.publish import hostremap_progs as hp

TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
CONF = hp.Confinement((32768, 60999), ((UDP, 5000, 5010),))


def m(hip: str, host: int, inner: int, proto: str = "tcp") -> Mapping:
    ip = ipaddress.ip_address(hip)
    return Mapping(proto, ip, host, ANY4 if ip.version == 4 else ANY6, inner)  # type: ignore[arg-type]


def run(code: bytes, ctx: bytearray) -> int:
    """Interpret the subset of eBPF the generators emit, on a bpf_sock_addr-shaped buffer (R1)."""
    regs = [0] * 11
    regs[1] = -1  # the context pointer
    insns = [struct.unpack("<BBhi", code[i : i + 8]) for i in range(0, len(code), 8)]
    pc = 0
    for _ in range(10_000):
        op, regs_byte, off, imm = insns[pc]
        dst, src = regs_byte & 0xF, regs_byte >> 4
        pc += 1
        if op == asm.ALU64 | asm.ALU_OPS["mov"] | asm.X:
            regs[dst] = regs[src]
        elif op == asm.ALU64 | asm.ALU_OPS["mov"] | asm.K:
            regs[dst] = imm & (2**64 - 1)
        elif op == asm.ALU | asm.ALU_OPS["mov"] | asm.K:
            regs[dst] = imm & 0xFFFFFFFF
        elif op == asm.LDX | asm.MEM | asm.W:
            assert regs[src] == -1, "loads only from the context"
            regs[dst] = int.from_bytes(ctx[off : off + 4], "little")
        elif op == asm.STX | asm.MEM | asm.W:
            assert regs[dst] == -1, "stores only to the context"
            ctx[off : off + 4] = (regs[src] & 0xFFFFFFFF).to_bytes(4, "little")
        elif op == asm.ALU | asm.END | asm.TO_BE:
            assert imm == 16
            regs[dst] = int.from_bytes((regs[dst] & 0xFFFF).to_bytes(2, "little"), "big")
        elif op == asm.JMP | asm.EXIT:
            return regs[0]
        elif op == asm.JMP | asm.JMP_OPS["ja"]:
            pc += off
        elif op & 0x07 == asm.JMP32:
            a, b = regs[dst] & 0xFFFFFFFF, imm & 0xFFFFFFFF
            name = {v: k for k, v in asm.JMP_OPS.items()}[op & 0xF0]
            taken = {"jeq": a == b, "jne": a != b, "jlt": a < b, "jle": a <= b}[name]
            pc += off if taken else 0
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")
    raise AssertionError("no exit")


def ctx_for(ip: str, port: int, proto: int) -> bytearray:
    ctx = bytearray(72)
    addr = ipaddress.ip_address(ip)
    ctx[0:4] = (socket.AF_INET if addr.version == 4 else socket.AF_INET6).to_bytes(4, "little")
    off = c.SA_USER_IP4 if addr.version == 4 else c.SA_USER_IP6
    ctx[off : off + len(addr.packed)] = addr.packed
    ctx[c.SA_USER_PORT : c.SA_USER_PORT + 2] = port.to_bytes(2, "big")
    ctx[c.SA_PROTOCOL : c.SA_PROTOCOL + 4] = proto.to_bytes(4, "little")
    return ctx


def addr_of(ctx: bytearray, version: int) -> tuple[str, int]:
    off, n = (c.SA_USER_IP4, 4) if version == 4 else (c.SA_USER_IP6, 16)
    port = int.from_bytes(ctx[c.SA_USER_PORT : c.SA_USER_PORT + 2], "big")
    return str(ipaddress.ip_address(bytes(ctx[off : off + n]))), port


def call(plans: list[hp.Plan], hook: int, ip: str, port: int, proto: int = TCP) -> tuple[int, str, int]:
    prog = next(p for p in plans if p.hook == hook)
    ctx = ctx_for(ip, port, proto)
    ret = run(asm.assemble(prog.insns), ctx)
    return (ret, *addr_of(ctx, ipaddress.ip_address(ip).version))


def test_bind_remaps_inner_to_host_and_confines_the_rest() -> None:
    plans = hp.plan([m("0.0.0.0", 8080, 80), m("::", 8080, 80), m("127.0.0.1", 5353, 53, "udp")], CONF)
    b4, b6 = c.BPF_CGROUP_INET4_BIND, c.BPF_CGROUP_INET6_BIND
    assert call(plans, b4, "0.0.0.0", 80) == (1, "0.0.0.0", 8080)
    assert call(plans, b6, "::", 80) == (1, "::", 8080)
    assert call(plans, b4, "0.0.0.0", 53, UDP) == (1, "127.0.0.1", 5353)  # the host IP is honoured
    assert call(plans, b6, "::", 53, UDP) == (1, "::ffff:7f00:1", 5353)  # v4-only: as v4-mapped
    assert call(plans, b4, "0.0.0.0", 53)[0] == 0  # 53/tcp was not published
    assert call(plans, b4, "0.0.0.0", 9999)[0] == 0  # EPERM
    assert call(plans, b4, "0.0.0.0", 8080)[0] == 0  # the host port itself is not CMD's to bind
    assert call(plans, b4, "0.0.0.0", 0) == (1, "0.0.0.0", 0)
    assert call(plans, b4, "0.0.0.0", 40000) == (1, "0.0.0.0", 40000)  # ephemeral
    assert call(plans, b4, "0.0.0.0", 5005, UDP) == (1, "0.0.0.0", 5005)  # --expose 5000-5010/udp
    assert call(plans, b4, "0.0.0.0", 5005)[0] == 0  # ... not tcp
    assert call(plans, b4, "0.0.0.0", 9999, socket.IPPROTO_ICMP)[0] == 1  # only TCP/UDP confined


def test_connect_and_names_show_the_inner_port() -> None:
    plans = hp.plan([m("0.0.0.0", 8080, 80), m("::", 8080, 80), m("198.18.0.1", 5353, 53, "udp")], CONF)
    assert call(plans, c.BPF_CGROUP_INET4_CONNECT, "127.0.0.1", 80) == (1, "127.0.0.1", 8080)
    assert call(plans, c.BPF_CGROUP_INET6_CONNECT, "::1", 80) == (1, "::1", 8080)
    assert call(plans, c.BPF_CGROUP_INET4_CONNECT, "127.0.0.2", 80) == (1, "127.0.0.2", 80)  # untouched
    assert call(plans, c.BPF_CGROUP_UDP4_SENDMSG, "127.0.0.1", 53, UDP) == (1, "198.18.0.1", 5353)
    assert call(plans, c.BPF_CGROUP_UDP4_RECVMSG, "198.18.0.1", 5353, UDP) == (1, "127.0.0.1", 53)
    assert call(plans, c.BPF_CGROUP_INET4_GETSOCKNAME, "0.0.0.0", 8080) == (1, "0.0.0.0", 80)
    assert call(plans, c.BPF_CGROUP_INET6_GETSOCKNAME, "::", 8080) == (1, "::", 80)
    assert call(plans, c.BPF_CGROUP_INET4_GETPEERNAME, "127.0.0.1", 8080) == (1, "127.0.0.1", 80)
    assert call(plans, c.BPF_CGROUP_INET4_GETPEERNAME, "127.0.0.1", 8081) == (1, "127.0.0.1", 8081)


def test_a_high_address_byte_compares_as_32_bits() -> None:
    """200.x has its top bit set in the little-endian word: a 64-bit compare would sign-extend."""
    plans = hp.plan([m("198.18.0.200", 9000, 90)], CONF)
    assert call(plans, c.BPF_CGROUP_INET4_CONNECT, "127.0.0.1", 90) == (1, "198.18.0.200", 9000)
    assert call(plans, c.BPF_CGROUP_INET4_GETPEERNAME, "198.18.0.200", 9000) == (1, "127.0.0.1", 90)


def test_only_bind_is_planned_without_mappings_and_names_fit_the_kernel() -> None:
    plans = hp.plan([], CONF)
    assert [p.hook for p in plans] == [c.BPF_CGROUP_INET4_BIND, c.BPF_CGROUP_INET6_BIND]
    for p in hp.plan([m("0.0.0.0", 8080, 80, "udp"), m("::", 8080, 80, "udp")], CONF):
        assert len(p.name) <= 15 and asm.count(p.insns) < 100


def test_one_inner_port_cannot_go_to_two_host_ports() -> None:
    with pytest.raises(BadInput, match="container port 80 is already published as 0.0.0.0:8080"):
        hp.plan([m("0.0.0.0", 8080, 80), m("0.0.0.0", 8081, 80)], CONF)
    hp.plan([m("0.0.0.0", 8080, 80), m("0.0.0.0", 8080, 80, "udp")], CONF)  # another protocol is fine
