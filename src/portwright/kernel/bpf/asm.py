"""A small eBPF assembler: named instruction builders, symbolic labels, and ``assemble``.

Each builder returns a frozen ``Insn`` (or a ``Label``/``Jump`` placeholder); ``assemble`` lays
out a program, resolves every symbolic jump to an offset counted in 8-byte slots (``ld_imm64``
takes two), and packs ``struct bpf_insn`` (include/uapi/linux/bpf.h: u8 code, u8 dst:4 src:4
on little-endian, s16 off, s32 imm). Pure: no syscalls, unit-tested without root.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .consts import BPF_PSEUDO_MAP_FD

# Opcode classes, sizes, modes and operations (include/uapi/linux/bpf_common.h and bpf.h).
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
IMM, MEM = 0x00, 0x60
K, X = 0x00, 0x08
ALU_OPS = {
    "add": 0x00, "sub": 0x10, "mul": 0x20, "div": 0x30, "or": 0x40, "and": 0x50,
    "lsh": 0x60, "rsh": 0x70, "neg": 0x80, "mod": 0x90, "xor": 0xA0, "mov": 0xB0, "arsh": 0xC0,
}  # fmt: skip
END = 0xD0
TO_LE, TO_BE = 0x00, 0x08
JMP_OPS = {
    "ja": 0x00, "jeq": 0x10, "jgt": 0x20, "jge": 0x30, "jset": 0x40, "jne": 0x50, "jsgt": 0x60,
    "jsge": 0x70, "jlt": 0xA0, "jle": 0xB0, "jslt": 0xC0, "jsle": 0xD0,
}  # fmt: skip
CALL, EXIT = 0x80, 0x90
_SIZES = {"w": W, "h": H, "b": B, "dw": DW}


@dataclass(frozen=True, slots=True)
class Insn:
    """One 8-byte instruction slot."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.dst <= 10 and 0 <= self.src <= 10):
            raise ValueError(f"register out of range in {self}")
        if not -(1 << 15) <= self.off < (1 << 15):
            raise ValueError(f"offset {self.off} does not fit 16 bits")
        if not -(1 << 31) <= self.imm < (1 << 32):
            raise ValueError(f"immediate {self.imm} does not fit 32 bits")

    def pack(self) -> bytes:
        imm = self.imm - (1 << 32) if self.imm >= (1 << 31) else self.imm
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off, imm)


@dataclass(frozen=True, slots=True)
class Label:
    """A position in the program that jumps name; takes no slot."""

    name: str


@dataclass(frozen=True, slots=True)
class Jump:
    """A conditional or unconditional jump to a label, resolved by ``assemble``."""

    code: int
    dst: int
    src: int
    imm: int
    target: str


Item = Insn | Label | Jump


def label(name: str) -> Label:
    return Label(name)


def mov64_imm(dst: int, imm: int) -> Insn:
    return Insn(ALU64 | ALU_OPS["mov"] | K, dst, 0, 0, imm)


def mov64_reg(dst: int, src: int) -> Insn:
    return Insn(ALU64 | ALU_OPS["mov"] | X, dst, src)


def mov32_imm(dst: int, imm: int) -> Insn:
    return Insn(ALU | ALU_OPS["mov"] | K, dst, 0, 0, imm)


def alu64_imm(op: str, dst: int, imm: int) -> Insn:
    return Insn(ALU64 | ALU_OPS[op] | K, dst, 0, 0, imm)


def alu64_reg(op: str, dst: int, src: int) -> Insn:
    return Insn(ALU64 | ALU_OPS[op] | X, dst, src)


def alu32_imm(op: str, dst: int, imm: int) -> Insn:
    return Insn(ALU | ALU_OPS[op] | K, dst, 0, 0, imm)


def alu32_reg(op: str, dst: int, src: int) -> Insn:
    return Insn(ALU | ALU_OPS[op] | X, dst, src)


def endian(dst: int, bits: int, big: bool = True) -> Insn:
    """Byte-swap dst to big (network) or little endian; bits is 16, 32 or 64."""
    if bits not in (16, 32, 64):
        raise ValueError(f"endian width {bits} is not 16, 32 or 64")
    return Insn(ALU | END | (TO_BE if big else TO_LE), dst, 0, 0, bits)


def ldx(size: str, dst: int, src: int, off: int) -> Insn:
    """dst = *(size *)(src + off)."""
    return Insn(LDX | MEM | _SIZES[size], dst, src, off)


def stx(size: str, dst: int, off: int, src: int) -> Insn:
    """*(size *)(dst + off) = src."""
    return Insn(STX | MEM | _SIZES[size], dst, src, off)


def st(size: str, dst: int, off: int, imm: int) -> Insn:
    """*(size *)(dst + off) = imm."""
    return Insn(ST | MEM | _SIZES[size], dst, 0, off, imm)


def ldx_w(dst: int, src: int, off: int) -> Insn:
    return ldx("w", dst, src, off)


def ldx_h(dst: int, src: int, off: int) -> Insn:
    return ldx("h", dst, src, off)


def ldx_b(dst: int, src: int, off: int) -> Insn:
    return ldx("b", dst, src, off)


def ldx_dw(dst: int, src: int, off: int) -> Insn:
    return ldx("dw", dst, src, off)


def stx_w(dst: int, off: int, src: int) -> Insn:
    return stx("w", dst, off, src)


def stx_h(dst: int, off: int, src: int) -> Insn:
    return stx("h", dst, off, src)


def stx_b(dst: int, off: int, src: int) -> Insn:
    return stx("b", dst, off, src)


def stx_dw(dst: int, off: int, src: int) -> Insn:
    return stx("dw", dst, off, src)


def st_w(dst: int, off: int, imm: int) -> Insn:
    return st("w", dst, off, imm)


def st_h(dst: int, off: int, imm: int) -> Insn:
    return st("h", dst, off, imm)


def st_b(dst: int, off: int, imm: int) -> Insn:
    return st("b", dst, off, imm)


def st_dw(dst: int, off: int, imm: int) -> Insn:
    return st("dw", dst, off, imm)


def ld_imm64(dst: int, value: int, src: int = 0) -> list[Insn]:
    """The two-slot ``lddw``: dst = a 64-bit constant (low half in the first slot's imm)."""
    value &= (1 << 64) - 1
    return [Insn(LD | DW | IMM, dst, src, 0, value & 0xFFFFFFFF), Insn(0, 0, 0, 0, value >> 32)]


def ld_map_fd(dst: int, map_fd: int) -> list[Insn]:
    """dst = a map pointer: ld_imm64 with src BPF_PSEUDO_MAP_FD, which the loader resolves."""
    return ld_imm64(dst, map_fd, src=BPF_PSEUDO_MAP_FD)


def jmp_imm(op: str, dst: int, imm: int, target: str) -> Jump:
    """if (dst OP imm) goto target (64-bit compare)."""
    return Jump(JMP | JMP_OPS[op] | K, dst, 0, imm, target)


def jmp_reg(op: str, dst: int, src: int, target: str) -> Jump:
    """if (dst OP src) goto target (64-bit compare)."""
    return Jump(JMP | JMP_OPS[op] | X, dst, src, 0, target)


def jmp32_imm(op: str, dst: int, imm: int, target: str) -> Jump:
    """if ((u32)dst OP imm) goto target."""
    return Jump(JMP32 | JMP_OPS[op] | K, dst, 0, imm, target)


def ja(target: str) -> Jump:
    return Jump(JMP | JMP_OPS["ja"], 0, 0, 0, target)


def call(helper: int) -> Insn:
    return Insn(JMP | CALL, 0, 0, 0, helper)


def exit() -> Insn:  # noqa: A001 - the instruction's name
    return Insn(JMP | EXIT)


def flatten(prog: Iterable[Item | Sequence[Item]]) -> list[Item]:
    out: list[Item] = []
    for item in prog:
        if isinstance(item, Insn | Label | Jump):
            out.append(item)
        else:
            out.extend(item)
    return out


def assemble(prog: Iterable[Item | Sequence[Item]]) -> bytes:
    """Pack a program, resolving labels; raises ValueError on an unknown or duplicate label."""
    items = flatten(prog)
    where: dict[str, int] = {}
    slot = 0
    for item in items:
        if isinstance(item, Label):
            if item.name in where:
                raise ValueError(f"label {item.name!r} is defined twice")
            where[item.name] = slot
        else:
            slot += 1
    out = bytearray()
    slot = 0
    for item in items:
        if isinstance(item, Label):
            continue
        if isinstance(item, Jump):
            if item.target not in where:
                raise ValueError(f"jump to undefined label {item.target!r}")
            item = Insn(item.code, item.dst, item.src, where[item.target] - slot - 1, item.imm)
        out += item.pack()
        slot += 1
    return bytes(out)


def count(prog: Iterable[Item | Sequence[Item]]) -> int:
    """How many 8-byte slots the program takes."""
    return sum(1 for i in flatten(prog) if not isinstance(i, Label))
