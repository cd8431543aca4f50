"""The waiter on other machines (proxy/waiter.py, issue 15): its C source has x86_64 and aarch64
system calls, the aarch64 build is a static AArch64 ELF (with a cross compiler), any other
machine is refused in one line, and ``install`` there links the Python entry point instead.
No root needed."""

from __future__ import annotations

import os
import platform
import shutil
import struct

import pytest

from portwright.errors import BadInput
from portwright.proxy import shared, waiter

EM_X86_64 = 62  # ELF e_machine values (elf.h)
EM_AARCH64 = 183
CROSS = "aarch64-linux-gnu-gcc"


def _elf_machine(path: str) -> tuple[int, int]:
    """(e_type, e_machine) of an ELF file."""
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF"
    e_type, e_machine = struct.unpack_from("<HH", head, 16)
    return e_type, e_machine


def test_source_has_both_architectures_and_refuses_the_rest() -> None:
    src = waiter.render("/usr/bin/python3", "/run/x")
    assert "#if defined(__x86_64__)" in src and "#elif defined(__aarch64__)" in src
    assert '#error "the portwright-proxy waiter is written for x86_64 and aarch64 only"' in src
    assert '"svc #0"' in src and '"syscall"' in src


@pytest.mark.parametrize("machine", ["riscv64", "ppc64le", "s390x", "i686"])
def test_build_on_another_machine_fails_in_one_line(tmp_path: object, machine: str) -> None:
    out = os.path.join(str(tmp_path), "portwright-proxy")
    with pytest.raises(BadInput) as e:
        waiter.build(out, directory=os.path.join(str(tmp_path), "run"), machine=machine)
    msg = str(e.value)
    assert "\n" not in msg and machine in msg and "Python entry point" in msg
    assert not os.path.exists(out)


@pytest.mark.skipif(shutil.which(CROSS) is None, reason=f"{CROSS} (apt-get install gcc-aarch64-linux-gnu)")
def test_aarch64_waiter_is_a_tiny_static_arm64_elf(tmp_path: object) -> None:
    out = os.path.join(str(tmp_path), "portwright-proxy")
    size = waiter.build(out, directory=os.path.join(str(tmp_path), "run"), compiler=CROSS, machine="aarch64")
    assert size < 8192 and os.path.getsize(out) == size
    assert _elf_machine(out) == (2, EM_AARCH64)  # ET_EXEC: static, no interpreter


@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("gcc") is None, reason="x86_64 + gcc")
def test_native_build_still_targets_this_machine(tmp_path: object) -> None:
    out = os.path.join(str(tmp_path), "portwright-proxy")
    waiter.build(out, directory=os.path.join(str(tmp_path), "run"))
    assert _elf_machine(out) == (2, EM_X86_64)


def test_install_on_another_machine_links_the_python_entry_point(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    entry = waiter.python_entry_point()
    if not os.access(entry, os.X_OK):
        pytest.skip(f"{entry} is not installed")
    out = os.path.join(str(tmp_path), "libexec", "portwright-proxy")
    assert shared.install(out, os.path.join(str(tmp_path), "run"), 0) == 0
    assert os.path.islink(out) and os.readlink(out) == entry
    said = capsys.readouterr().out.strip()
    assert "\n" not in said and "riscv64" in said and f"--userland-proxy-path={out}" in said
