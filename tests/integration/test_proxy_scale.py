"""10,000 concurrent connections through one proxy process, with bounded memory.

The proxy runs in its own process (so its memory can be read from /proc), the clients in another,
the echo backend in a namespace. Each relayed connection costs the proxy two file descriptors; a
machine whose hard RLIMIT_NOFILE cannot hold 2 x 10,000 (and no CAP_SYS_RESOURCE to raise it)
runs the largest count that fits and says so.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator

import pytest
from proxynet import Backend, backend_ns, free_port

TARGET = 10_000

PROXY = r"""
import ipaddress, json, sys
from portwright.model import Mapping
from portwright.proxy.server import ProxyServer
port, cip, cport = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
srv = ProxyServer([Mapping("tcp", ipaddress.ip_address("127.0.0.1"), port, ipaddress.ip_address(cip), cport)])
srv.start()
print("ready", flush=True)
for line in sys.stdin:
    print(json.dumps(list(srv.stats().values())[0]), flush=True)
srv.stop()
"""

CLIENT = r"""
import errno, os, resource, select, socket, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
socks = []
ep = select.epoll()
pending = {}
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    e = s.connect_ex(("127.0.0.1", port))
    socks.append(s)
    if e == errno.EINPROGRESS:
        pending[s.fileno()] = s
        ep.register(s.fileno(), select.EPOLLOUT)
    if len(pending) >= 1000 or i == n - 1:  # stay under the listen backlog
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for fd, ev in ep.poll(1.0):
                s2 = pending.pop(fd)
                ep.unregister(fd)
                err = s2.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    print("connect failed", os.strerror(err), flush=True); sys.exit(1)
        if pending:
            print("connect timeout", len(pending), flush=True); sys.exit(1)
# every connection really is relayed: one byte out, one byte back
for s in socks:
    s.setblocking(True); s.settimeout(10)
    s.send(b"!")
for s in socks:
    if s.recv(1) != b"!":
        print("bad echo", flush=True); sys.exit(1)
print("held", len(socks), flush=True)
sys.stdin.readline()
for s in socks:
    s.close()
print("closed", flush=True)
"""


@pytest.fixture
def be() -> Iterator[Backend]:
    with backend_ns() as b:
        yield b


def _pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise AssertionError("no Pss line")


def _pipe_fds(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
        except OSError:
            pass
    return n


@pytest.mark.timeout(120)
def test_ten_thousand_concurrent_connections_bounded_memory(be: Backend) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    n = TARGET if hard == resource.RLIM_INFINITY else min(TARGET, (hard - 200) // 2)
    if n < TARGET:
        warnings.warn(
            f"hard RLIMIT_NOFILE is {hard} here (no CAP_SYS_RESOURCE to raise it): one proxy "
            f"process can relay at most {n} connections, so the test holds {n}",
            stacklevel=1,
        )
    be.tcp_server(7200)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "..", "src")}
    proxy = subprocess.Popen(
        [sys.executable, "-c", PROXY, str(port), str(be.ip4), "7200"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    client: subprocess.Popen[str] | None = None
    try:
        assert proxy.stdout is not None and proxy.stdin is not None
        assert proxy.stdout.readline().strip() == "ready"

        def stats() -> dict[str, int]:
            assert proxy.stdin is not None and proxy.stdout is not None
            proxy.stdin.write("\n")
            proxy.stdin.flush()
            return dict(json.loads(proxy.stdout.readline()))

        base_pss = _pss_kb(proxy.pid)
        t0 = time.monotonic()
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(n), str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None and client.stdin is not None
        line = client.stdout.readline().strip()
        assert line == f"held {n}", line
        # counters are read without a lock while the loops run: let a read settle
        deadline = time.monotonic() + 5
        while True:
            st = stats()
            if (st["active"], st["total"], st["bytes_in"], st["bytes_out"]) == (
                n,
                n,
                n,
                n,
            ) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (st["active"], st["total"], st["bytes_in"], st["bytes_out"], st["errors"]) == (
            n,
            n,
            n,
            n,
            0,
        ), st
        grown_kb = _pss_kb(proxy.pid) - base_pss
        # ~1-2 KB of Python objects per relayed connection; idle connections hold no pipe
        assert grown_kb < 8 * n, f"proxy PSS grew {grown_kb} KB for {n} connections"
        assert _pipe_fds(proxy.pid) <= 4 * 64 + 8
        print(
            f"\n{n} connections held in {time.monotonic() - t0:.1f} s; proxy PSS +{grown_kb / 1024:.1f} MB "
            f"({grown_kb * 1024 / n:.0f} bytes per connection)"
        )
        client.stdin.write("\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "closed"
        deadline = time.monotonic() + 30
        while stats()["active"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stats()["active"] == 0
    finally:
        for p in (client, proxy):
            if p is not None and p.poll() is None:
                p.kill()
            if p is not None:
                p.wait()
                for f in (p.stdin, p.stdout):
                    if f is not None:
                        f.close()
