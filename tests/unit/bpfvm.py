"""A tiny eBPF interpreter for unit tests: runs the cgroup sock_addr programs portwright
generates against a fake context, fake socket and dict-backed maps, without root or a kernel.

It knows only what the generated programs use (64/32-bit ALU, loads and stores, ld_imm64 with
map fds, conditional jumps, the map and cookie helpers) and raises on anything else, so a program
that strays outside that set fails its test instead of passing by accident. The kernel's verifier
and the integration tests remain the judges of what really loads and runs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from portwright.kernel.bpf import consts as c

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1


@dataclass
class Ptr:
    buf: bytearray
    off: int = 0


@dataclass
class FakeMap:
    key_size: int
    value_size: int
    data: dict[bytes, bytearray] = field(default_factory=dict)


@dataclass
class Vm:
    maps: dict[int, FakeMap]
    netns_cookie: int = 1
    socket_cookie: int = 77
    steps: int = 0

    def run(self, code: bytes, ctx: bytearray, sk: bytearray) -> int:
        insns = [struct.unpack_from("<BBhi", code, i) for i in range(0, len(code), 8)]
        regs: list[int | Ptr | FakeMap] = [0] * 11
        stack = bytearray(512)
        regs[1], regs[10] = Ptr(ctx), Ptr(stack, 512)
        pc = 0
        while True:
            self.steps += 1
            if self.steps > 100_000:
                raise RuntimeError("program does not terminate")
            op, regbyte, off, imm = insns[pc]
            dst, src = regbyte & 0xF, regbyte >> 4
            cls = op & 7
            if op == 0x18:  # ld_imm64
                lo, hi = imm & M32, insns[pc + 1][3] & M32
                regs[dst] = self.maps[lo] if src == c.BPF_PSEUDO_MAP_FD else lo | (hi << 32)
                pc += 2
                continue
            if cls in (0x04, 0x07):
                regs[dst] = self._alu(op, regs[dst], regs[src] if op & 0x08 else imm, cls == 0x07)
            elif cls == 0x01:
                regs[dst] = self._load(regs[src], off, op & 0x18, ctx, sk)
            elif cls in (0x02, 0x03):
                self._store(regs[dst], off, op & 0x18, imm if cls == 0x02 else regs[src])
            elif cls in (0x05, 0x06):
                jop = op & 0xF0
                if jop == 0x80:
                    regs[0] = self._call(imm, regs)
                    for r in range(1, 6):
                        regs[r] = 0xDEAD  # clobbered
                elif jop == 0x90:
                    r0 = regs[0]
                    assert isinstance(r0, int)
                    return r0
                elif self._jump(jop, regs[dst], regs[src] if op & 0x08 else imm, cls == 0x06):
                    pc += off
            else:
                raise NotImplementedError(f"opcode {op:#x}")
            pc += 1

    @staticmethod
    def _alu(op: int, a: object, b: object, wide: bool) -> int | Ptr:
        kind = op & 0xF0
        if kind == 0xB0:  # mov
            if isinstance(b, Ptr):
                return Ptr(b.buf, b.off)
            assert isinstance(b, int)
            v = b & M64 if wide else b & M32
            return v
        if isinstance(a, Ptr):
            assert kind == 0x00 and isinstance(b, int) and wide, "only ptr += imm"
            return Ptr(a.buf, a.off + (b if b < (1 << 31) else b - (1 << 32)))
        assert isinstance(a, int) and isinstance(b, int), (a, b)
        b &= M64
        ops = {
            0x00: a + b,
            0x40: a | b,
            0x50: a & b,
            0x60: a << (b & 63),
            0x70: (a & (M64 if wide else M32)) >> b,
        }
        return ops[kind] & (M64 if wide else M32)

    @staticmethod
    def _load(p: object, off: int, size: int, ctx: bytearray, sk: bytearray) -> int | Ptr:
        assert isinstance(p, Ptr), f"load through non-pointer {p!r}"
        if p.buf is ctx and p.off + off == c.SA_SK:
            assert size == 0x18
            return Ptr(sk)
        n = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}[size]
        at = p.off + off
        assert 0 <= at and at + n <= len(p.buf), f"out of bounds {at}+{n} of {len(p.buf)}"
        return int.from_bytes(p.buf[at : at + n], "little")

    @staticmethod
    def _store(p: object, off: int, size: int, v: object) -> None:
        assert isinstance(p, Ptr) and isinstance(v, int)
        n = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}[size]
        at = p.off + off
        assert 0 <= at and at + n <= len(p.buf)
        p.buf[at : at + n] = (v & ((1 << (8 * n)) - 1)).to_bytes(n, "little")

    @staticmethod
    def _jump(jop: int, a: object, b: object, narrow: bool) -> bool:
        if jop == 0x00:
            return True
        if isinstance(a, Ptr):  # a map value pointer is never NULL
            a = 1
        assert isinstance(a, int) and isinstance(b, int)
        mask = M32 if narrow else M64
        if not narrow and b < 0:
            b &= M64
        a, b = a & mask, b & mask
        return {0x10: a == b, 0x50: a != b}[jop]

    def _call(self, helper: int, regs: list[int | Ptr | FakeMap]) -> int | Ptr:
        if helper == c.BPF_FUNC_get_netns_cookie:
            return self.netns_cookie
        if helper == c.BPF_FUNC_get_socket_cookie:
            return self.socket_cookie
        m = regs[1]
        assert isinstance(m, FakeMap)
        k = regs[2]
        assert isinstance(k, Ptr)
        key = bytes(k.buf[k.off : k.off + m.key_size])
        if helper == c.BPF_FUNC_map_lookup_elem:
            v = m.data.get(key)
            return Ptr(v) if v is not None else 0
        if helper == c.BPF_FUNC_map_update_elem:
            val = regs[3]
            assert isinstance(val, Ptr)
            m.data[key] = bytearray(val.buf[val.off : val.off + m.value_size])
            return 0
        raise NotImplementedError(f"helper {helper}")
