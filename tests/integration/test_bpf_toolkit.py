"""The BPF toolkit against the real kernel: maps (update, lookup, iterate, pin, reopen), a program
load failing with the verifier log, and a link on a private cgroup that pins, reopens and
detaches. Only a throwaway child cgroup is attached to, and every pin is removed afterwards."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from portwright.kernel import cgroup
from portwright.kernel.bpf import asm, fs, probe
from portwright.kernel.bpf import consts as c
from portwright.kernel.bpf.links import Link, detach_pinned
from portwright.kernel.bpf.maps import Map
from portwright.kernel.bpf.progs import Program
from portwright.kernel.bpf.syscall import BpfError


@pytest.fixture
def pins(tmp_path: object) -> Iterator[str]:
    path = fs.ensure_pin_dir(str(tmp_path))
    yield path
    fs.remove_pins(path)
    assert not os.path.exists(path)


@pytest.fixture
def child_cgroup() -> Iterator[str]:
    root = cgroup.cgroup2_root()
    if root is None:
        pytest.skip("no cgroup2 hierarchy")
    path = os.path.join(root, f"pw-bpftest-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    yield path
    os.rmdir(path)


def test_map_roundtrip_pin_and_reopen(pins: str) -> None:
    with Map.create(c.BPF_MAP_TYPE_HASH, 8, 4, 64, "pw_test") as m:
        for i in range(20):
            m.update(i.to_bytes(8, "little"), (i * 3).to_bytes(4, "little"))
        assert m.lookup((7).to_bytes(8, "little")) == (21).to_bytes(4, "little")
        assert m.lookup((99).to_bytes(8, "little")) is None
        assert m.delete((7).to_bytes(8, "little")) is True
        assert m.delete((7).to_bytes(8, "little")) is False
        m.pin(os.path.join(pins, "m"))
    with Map.open_pinned(os.path.join(pins, "m")) as again:
        assert (again.key_size, again.value_size) == (8, 4)
        assert len(again.items()) == 19
        with pytest.raises(ValueError, match="key is 3 bytes"):
            again.update(b"abc", b"abcd")


def test_load_error_carries_verifier_log() -> None:
    with pytest.raises(BpfError) as e:
        Program.load(
            c.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, asm.assemble([asm.exit()]), c.BPF_CGROUP_INET4_CONNECT, "bad"
        )
    assert "R0 !read_ok" in e.value.verifier_log
    assert str(e.value).startswith("bpf load program bad: Permission denied")


def _deny_port(port: int) -> bytes:
    """connect4: refuse (EPERM) connects to 127.0.0.1:port, allow everything else."""
    return asm.assemble(
        [
            asm.ldx_w(c.R2, c.R1, c.SA_USER_PORT),
            asm.mov64_imm(c.R0, 1),
            asm.jmp_imm("jne", c.R2, socket.htons(port), "out"),
            asm.mov64_imm(c.R0, 0),
            asm.label("out"),
            asm.exit(),
        ]
    )


def test_link_on_child_cgroup_pins_and_detaches(pins: str, child_cgroup: str) -> None:
    prog = Program.load(
        c.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, _deny_port(9), c.BPF_CGROUP_INET4_CONNECT, "pw_deny9"
    )
    with prog, Link.attach_cgroup(prog, child_cgroup, c.BPF_CGROUP_INET4_CONNECT) as link:
        link.pin(os.path.join(pins, "l"))
        info = link.info()
        assert info.attach_type == c.BPF_CGROUP_INET4_CONNECT and info.cgroup_id != 0
    # The pin keeps it attached after every fd is closed; a process in the cgroup is refused.
    pid = os.fork()
    if pid == 0:  # child: join the cgroup, try to connect
        code = 3
        try:
            with open(os.path.join(child_cgroup, "cgroup.procs"), "w") as f:
                f.write("0")
            s = socket.socket()
            try:
                s.connect(("127.0.0.1", 9))
                code = 0
            except PermissionError:
                code = 1
            except OSError:
                code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
    with Link.open_pinned(os.path.join(pins, "l")) as again:
        assert again.info().cgroup_id != 0
    assert detach_pinned(os.path.join(pins, "l")) is True
    assert detach_pinned(os.path.join(pins, "l")) is False


def test_probes_say_yes_here() -> None:
    assert probe.connect4() == (True, "")
    assert probe.bind4() == (True, "")
    assert probe.cgroup_link() == (True, "")


def test_batch_read_update_delete_match_the_per_element_calls() -> None:
    with Map.create(c.BPF_MAP_TYPE_HASH, 20, 32, 20000, "pw_batch", c.BPF_F_NO_PREALLOC) as m:
        items = [(i.to_bytes(20, "little"), (i * 7).to_bytes(32, "little")) for i in range(9000)]
        m.update_batch(items)
        got = m.items_batch(chunk=1000)  # several chunks, the last one ending with ENOENT
        assert sorted(got) == sorted(items) == sorted(m.items())
        gone = [k for k, _ in items[:4000]] + [(99999).to_bytes(20, "little")]  # one never there
        m.delete_batch(gone)
        assert sorted(m.items_batch()) == sorted(items[4000:])
        with pytest.raises(ValueError, match="wrong size"):
            m.update_batch([(b"x", b"y")])
