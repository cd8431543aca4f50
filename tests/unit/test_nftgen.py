"""NFT_MSG_GETGEN, built and parsed without a kernel (kernel/nftevents.py): the question restore
asks before it decides whether to read the table (#11)."""

from __future__ import annotations

import socket
import struct

from portwright.kernel import nftevents as n


def _answer(gen: int, mtype: int = (n.NFNL_SUBSYS_NFTABLES << 8) | n.NFT_MSG_NEWGEN) -> bytes:
    attrs = struct.pack("=HH", 8, n.NFTA_GEN_ID) + struct.pack(">I", gen)
    attrs += struct.pack("=HH", 8, 2) + struct.pack(">I", 4242)  # NFTA_GEN_PROC_PID, skipped
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(gen & 0xFFFF)) + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 1, 0) + body


def test_the_request_is_a_getgen_of_the_nftables_subsystem() -> None:
    req = n.getgen_request(7)
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", req)
    assert length == len(req) == 20
    assert mtype == 0x0A10 and flags == n.NLM_F_REQUEST and seq == 7 and pid == 0
    assert req[16:] == struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)


def test_the_generation_is_read_from_its_attribute() -> None:
    assert n.parse_newgen(_answer(130114)) == 130114
    assert n.parse_newgen(_answer(0xFFFFFFFF)) == 0xFFFFFFFF


def test_anything_else_is_no_answer() -> None:
    assert n.parse_newgen(_answer(5, mtype=n.NLMSG_ERROR)) is None
    assert n.parse_newgen(_answer(5)[:18]) is None  # truncated
    assert n.parse_newgen(b"") is None
    no_attr = _answer(5)[:20]
    no_attr = struct.pack("=I", 20) + no_attr[4:]
    assert n.parse_newgen(no_attr) is None
    broken = bytearray(_answer(5))
    struct.pack_into("=H", broken, 20, 2)  # an attribute shorter than its own header
    assert n.parse_newgen(bytes(broken)) is None
