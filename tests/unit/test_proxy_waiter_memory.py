"""What one waiter keeps resident (proxy/waiter.py, issue 15): dockerd starts one per port and
address family, so its pages count hundreds of times. The built waiter has no writable ELF
segment; while it waits, its only private page is the one stack page under its argument strings
(two when its frames do not fit below them), and ``/proc/PID/cmdline`` still shows docker-proxy's
flags. A stand-in relay (a SOCK_SEQPACKET socket of the test's) answers it: no root needed."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import time

import pytest

from portwright.errors import BadInput
from portwright.proxy import waiter

NEEDS_GCC = pytest.mark.skipif(
    platform.machine() != "x86_64" or shutil.which("gcc") is None, reason="x86_64 + gcc"
)
PAGE = 4096
ARGS = ["-proto", "tcp", "-host-ip", "127.0.0.1", "-host-port", "21999", "-container-ip", "198.18.0.2"]
ARGS += ["-container-port", "8000"]


def _elf64(segments: list[tuple[int, int]]) -> bytes:
    """A minimal little-endian ELF64 header with these (p_type, p_flags) program headers."""
    head = bytearray(64)
    head[:6] = b"\x7fELF\x02\x01"
    head[32:40] = (64).to_bytes(8, "little")  # e_phoff
    head[54:56] = (56).to_bytes(2, "little")  # e_phentsize
    head[56:58] = len(segments).to_bytes(2, "little")  # e_phnum
    body = b"".join(t.to_bytes(4, "little") + f.to_bytes(4, "little") + bytes(48) for t, f in segments)
    return bytes(head) + body


def test_writable_segments_finds_writable_load_segments_only() -> None:
    elf = _elf64([(waiter.PT_LOAD, 5), (waiter.PT_LOAD, 6), (0x6474E551, 6)])  # R+X, R+W, GNU_STACK
    assert waiter.writable_segments(elf) == [1]
    assert waiter.writable_segments(_elf64([(waiter.PT_LOAD, 5)])) == []


@pytest.mark.parametrize("bad", [b"", b"#!/bin/sh\n" + bytes(64), b"\x7fELF\x01\x01" + bytes(64)])
def test_writable_segments_refuses_what_is_not_an_elf64(bad: bytes) -> None:
    with pytest.raises(BadInput, match="64-bit ELF"):
        waiter.writable_segments(bad)


@NEEDS_GCC
def test_built_waiter_has_no_writable_segment(tmp_path: object) -> None:
    out = os.path.join(str(tmp_path), "portwright-proxy")
    waiter.build(out, python="/nonexistent/python", directory=os.path.join(str(tmp_path), "run"))
    with open(out, "rb") as f:
        assert waiter.writable_segments(f.read()) == []


def _resident(pid: int) -> tuple[int, int, int]:
    """(stack kB resident, kB resident in other writable mappings, stack end address)."""
    stack = other = end = 0
    name, lo_hi, perms = "", (0, 0), ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                lo, hi = parts[0].split("-")
                lo_hi, perms = (int(lo, 16), int(hi, 16)), parts[1]
                name = parts[5] if len(parts) > 5 else ""
            elif parts[0] == "Rss:":
                if name == "[stack]":
                    stack, end = int(parts[1]), lo_hi[1]
                elif "w" in perms:
                    other += int(parts[1])
    return stack, other, end


def _arg_start(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[48 - 3])  # field 48 (1-based, man 5 proc): arg_start; fields start at 3 here


def _accept(srv: socket.socket, expect: bytes) -> socket.socket:
    conn, _ = srv.accept()
    assert conn.recv(8192) == expect
    conn.send(b"0\n")
    return conn


@NEEDS_GCC
@pytest.mark.parametrize("pad", [0, 3000, 6000])
def test_waiting_waiter_keeps_one_stack_page_and_its_command_line(tmp_path: object, pad: int) -> None:
    d = os.path.join(str(tmp_path), "run")
    os.makedirs(d)
    out = os.path.join(str(tmp_path), "portwright-proxy")
    waiter.build(out, python="/nonexistent/python", directory=d)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(os.path.join(d, "relay.sock"))
    srv.listen(4)
    srv.settimeout(10)
    r, w = os.pipe()
    env = {"PAD": "x" * pad} if pad else {}
    p = subprocess.Popen(
        [out, *ARGS], env=env, close_fds=False, preexec_fn=lambda: os.dup2(w, 3), stdin=subprocess.DEVNULL
    )
    os.close(w)
    expect = b"PWW1\0" + b"".join(a.encode() + b"\0" for a in ARGS)
    try:
        conn = _accept(srv, expect)
        assert os.read(r, 64) == b"0\n"
        time.sleep(0.2)  # it is in poll(2) now
        with open(f"/proc/{p.pid}/cmdline", "rb") as f:
            assert f.read() == b"\0".join(a.encode() for a in [out, *ARGS]) + b"\0"
        stack_kb, other_kb, end = _resident(p.pid)
        start = _arg_start(p.pid)
        string_pages = (end - (start & ~(PAGE - 1))) // PAGE
        below = 1 if start % PAGE < 2048 else 0  # its frames may need the page under the strings
        assert other_kb == 0, "a writable mapping besides the stack is resident"
        assert stack_kb <= (string_pages + below) * 4, (stack_kb, string_pages, start % PAGE)
        # the relay goes away: the waiter registers again with the same message (the strings the
        # message is made of are still there after the old stack pages were given back)
        conn.close()
        conn = _accept(srv, expect)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0
        conn.close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(r)
        srv.close()
