"""10,000 ports in proxy mode, detached, under this machine's hard RLIMIT_NOFILE of 20,000 (issue 13.4).

Before: two sockets per wildcard port (20,000 descriptors), a hand-off message over 1 MiB, and
the supervisor's select() on descriptors above 1,024 each stopped it. Now one dual-stack socket
per port, each sent to the holder once, and poll(2). Ten blocks of 1,000 free ports are taken
from below the ephemeral range (skipped, saying so, when the shared machine has none).
"""

from __future__ import annotations

import os
import socket
import sys

import pytest
from pwutil import inspect, pw, uniq

pytestmark = pytest.mark.integration

BLOCKS, SIZE = 10, 1000


def _free(port: int) -> bool:
    s = socket.socket(socket.AF_INET6)
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        s.listen(1)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _blocks() -> list[int]:
    out: list[int] = []
    base = 10000
    while len(out) < BLOCKS and base + SIZE <= 32768:
        if all(_free(p) for p in range(base, base + SIZE)):
            out.append(base)
        base += SIZE
    return out


def test_ten_thousand_ports_in_proxy_mode_fit_the_descriptor_limit() -> None:
    bases = _blocks()
    if len(bases) < BLOCKS:
        pytest.skip(f"only {len(bases)} free blocks of {SIZE} ports below 32768 on this shared machine")
    args = [a for b in bases for a in ("-p", f"{b}-{b + SIZE - 1}:{b}-{b + SIZE - 1}")]
    name = uniq("tenk")
    pw(
        "run",
        "-d",
        "--name",
        name,
        "--publish-mode",
        "proxy",
        *args,
        "--",
        sys.executable,
        "-c",
        "import time; time.sleep(600)",
        timeout=300,
    )
    try:
        sup = inspect(name)["State"]["SupervisorPid"]
        assert sup
        fds = os.listdir(f"/proc/{sup}/fd")
        assert BLOCKS * SIZE <= len(fds) < BLOCKS * SIZE + 200  # one socket per port, not two
        for port in (bases[0], bases[-1] + SIZE - 1):
            for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                with socket.socket(fam) as c:
                    assert c.connect_ex((host, port)) == 0, (host, port)  # the relay accepts
    finally:
        pw("rm", "-f", name, timeout=300)
    assert all(_free(p) for p in (bases[0], bases[-1] + SIZE - 1))
