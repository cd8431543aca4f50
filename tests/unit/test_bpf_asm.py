"""The BPF assembler: encodings checked byte for byte against struct bpf_insn, label resolution,
and the builders' range checks. Pure: no bpf() calls."""

from __future__ import annotations

import pytest

from portwright.kernel.bpf import asm
from portwright.kernel.bpf import consts as c


def test_simple_encodings() -> None:
    assert asm.mov64_imm(c.R0, 1).pack() == bytes.fromhex("b700000001000000")
    assert asm.exit().pack() == bytes.fromhex("9500000000000000")
    assert asm.mov64_reg(c.R6, c.R1).pack() == bytes.fromhex("bf16000000000000")
    assert asm.call(c.BPF_FUNC_get_netns_cookie).pack() == bytes.fromhex("850000007a000000")
    # r2 = *(u32 *)(r6 + 24): user_port
    assert asm.ldx_w(c.R2, c.R6, c.SA_USER_PORT).pack() == bytes.fromhex("6162180000000000")
    # *(u32 *)(r10 - 8) = r3
    assert asm.stx_w(c.R10, -8, c.R3).pack() == bytes.fromhex("633af8ff00000000")
    assert asm.st_w(c.R10, -4, 0x0100007F).pack() == bytes.fromhex("620afcff7f000001")
    assert asm.alu64_imm("add", c.R2, -16).pack() == bytes.fromhex("07020000f0ffffff")
    assert asm.endian(c.R3, 16).pack() == bytes.fromhex("dc03000010000000")


def test_negative_and_unsigned_immediates_pack_the_same() -> None:
    assert asm.mov64_imm(c.R1, -1).pack() == asm.mov64_imm(c.R1, 0xFFFFFFFF).pack()


def test_ld_map_fd_is_two_slots_with_pseudo_src() -> None:
    code = asm.assemble([asm.ld_map_fd(c.R1, 7)])
    assert code == bytes.fromhex("1811000007000000" + "0000000000000000")


def test_ld_imm64_splits_halves() -> None:
    code = asm.assemble([asm.ld_imm64(c.R3, 0x1122334455667788)])
    assert code == bytes.fromhex("1803000088776655" + "0000000044332211")


def test_labels_resolve_forward_and_backward_counting_wide_slots() -> None:
    prog = [
        asm.label("top"),
        asm.jmp_imm("jeq", c.R1, 0, "out"),  # slot 0
        asm.ld_imm64(c.R2, 1),  # slots 1-2
        asm.ja("top"),  # slot 3: back to 0 -> off -4
        asm.label("out"),
        asm.mov64_imm(c.R0, 1),  # slot 4
        asm.exit(),
    ]
    code = asm.assemble(prog)
    assert len(code) == 6 * 8 == asm.count(prog) * 8
    assert code[0:8] == bytes.fromhex("1501030000000000")  # off +3: 0 -> 4
    assert code[24:32] == bytes.fromhex("0500fcff00000000")  # off -4


def test_jmp_reg_and_jmp32() -> None:
    code = asm.assemble(
        [asm.jmp_reg("jne", c.R0, c.R7, "x"), asm.jmp32_imm("jeq", c.R1, 2, "x"), asm.label("x")]
    )
    assert code == bytes.fromhex("5d70010000000000" + "1601000002000000")


def test_label_errors() -> None:
    with pytest.raises(ValueError, match="undefined label 'nope'"):
        asm.assemble([asm.ja("nope")])
    with pytest.raises(ValueError, match="defined twice"):
        asm.assemble([asm.label("a"), asm.label("a")])


def test_range_checks() -> None:
    with pytest.raises(ValueError):
        asm.Insn(0, dst=11)
    with pytest.raises(ValueError):
        asm.ldx_w(c.R1, c.R2, 1 << 15)
    with pytest.raises(ValueError):
        asm.mov64_imm(c.R0, 1 << 32)
    with pytest.raises(ValueError):
        asm.endian(c.R1, 8)


def test_attach_names_cover_the_hooks() -> None:
    assert c.ATTACH_NAMES[c.BPF_CGROUP_INET6_CONNECT] == "inet6_connect"
    assert c.ATTACH_NAMES[c.BPF_CGROUP_UDP4_RECVMSG] == "udp4_recvmsg"


def test_bpf_error_is_one_line_plus_log() -> None:
    from portwright.kernel.bpf.syscall import BpfError

    e = BpfError(13, "load program x", "0: (95) exit\nR0 !read_ok\n")
    lines = str(e).splitlines()
    assert lines[0] == "bpf load program x: Permission denied (EACCES)"
    assert lines[1:] == ["0: (95) exit", "R0 !read_ok"]
    assert str(BpfError(1, "pin")) == "bpf pin: Operation not permitted (EPERM)"
