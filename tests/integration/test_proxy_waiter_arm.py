"""The aarch64 waiter, cross-compiled and run under qemu-user, registers a port with the shared
relay and stops on SIGTERM exactly as the x86_64 one does (issue 15: the waiter is no longer
x86_64-only). Skipped without ``aarch64-linux-gnu-gcc`` and ``qemu-aarch64-static``
(apt-get install gcc-aarch64-linux-gnu qemu-user-static)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest
from proxynet import free_port, wait_until
from test_proxy_shared import Lab, echo, echo_server, flags, lab, refused  # noqa: F401 (fixture)

from portwright.proxy import shared, waiter

CROSS = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64-static"


@pytest.mark.skipif(shutil.which(CROSS) is None or shutil.which(QEMU) is None, reason=f"{CROSS}, {QEMU}")
def test_aarch64_waiter_registers_serves_and_stops(lab: Lab) -> None:  # noqa: F811
    arm = os.path.join(os.path.dirname(lab.bin), "portwright-proxy-arm64")
    waiter.build(arm, directory=lab.dir, compiler=CROSS, machine="aarch64")
    with echo_server() as b:
        first, second = free_port(), free_port()
        _, st = lab.spawn(*flags("tcp", "127.0.0.1", first, b))  # the native waiter starts the relay
        assert st == b"0\n"
        r, w = os.pipe()
        p = subprocess.Popen(
            [QEMU, arm, *flags("tcp", "127.0.0.1", second, b)],
            preexec_fn=lambda: os.dup2(w, 3),
            close_fds=False,
            stdin=subprocess.DEVNULL,
        )
        lab.waiters.append(p)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            status = f.read()
        assert status == b"0\n", status
        assert echo(second, b"arm" * 100) == b"arm" * 100 + b"|ok"
        rows = {row["binding"]: row for row in shared.query(lab.dir)["ports"]}
        assert rows[f"127.0.0.1:{second}/tcp"]["waiter_pid"] == p.pid
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
        assert wait_until(lambda: refused(second), timeout=5)  # its port closed with it
        assert echo(first, b"x") == b"x|ok"
