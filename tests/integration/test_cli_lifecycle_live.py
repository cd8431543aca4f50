"""``start``, ``restart`` and ``prune`` as a Docker user drives them (issue 17): a stopped
detached sandbox comes back with its ID, its addresses (while free) and its published port,
serving again, its logs continuing; a start that cannot take its port leaves the sandbox as it
was; ``prune`` asks first (answered through a real pseudo-terminal), refuses without a terminal
unless ``-f``, and removes with ``-f``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from proxynet import wait_until
from pwutil import curl, free_port, inspect, ps_json, pw, temp_network, uniq, wait_tcp

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def net() -> Iterator[str]:
    with temp_network(prefix="lc") as n:
        yield n


def _web(net: str, port: int, name: str | None = None) -> str:
    name = name or uniq("lc")
    script = f"echo started; exec {sys.executable} -m http.server --bind 0.0.0.0 8000"
    pw(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        net,
        "-p",
        f"127.0.0.1:{port}:8000",
        "--",
        "sh",
        "-c",
        script,
    )
    wait_tcp(None, inspect(name)["NetworkSettings"]["IPAddress"], 8000)
    return name


def _status(name: str) -> str:
    return next(r["Status"] for r in ps_json("-a") if r["Names"] == name)


def test_stop_then_start_brings_it_back(net: str) -> None:
    port = free_port()
    name = _web(net, port)
    try:
        before = inspect(name)
        pw("stop", "-t", "1", name)
        assert wait_until(lambda: inspect(name)["State"]["Status"] == "exited")
        assert _status(name).startswith("Exited (") and _status(name).endswith(" ago")
        assert pw("start", name).stdout == f"{name}\n"
        after = inspect(name)
        assert after["Id"] == before["Id"] and after["State"]["Running"]
        for key in ("IPAddress", "GlobalIPv6Address"):
            assert after["NetworkSettings"][key] == before["NetworkSettings"][key]
        wait_tcp(None, after["NetworkSettings"]["IPAddress"], 8000)
        assert "Directory listing" in curl(f"http://127.0.0.1:{port}/")
        assert pw("logs", name).stdout.split().count("started") == 2  # the logs go on
        assert pw("start", name).stdout == f"{name}\n"  # already running: nothing to do
    finally:
        pw("rm", "-f", name, check=False)


def test_restart_a_running_sandbox(net: str) -> None:
    port = free_port()
    name = _web(net, port)
    try:
        sid, pid = inspect(name)["Id"], inspect(name)["State"]["Pid"]
        assert pw("restart", "-t", "1", name).stdout == f"{name}\n"
        info = inspect(name)
        assert info["Id"] == sid and info["State"]["Running"] and info["State"]["Pid"] != pid
        wait_tcp(None, info["NetworkSettings"]["IPAddress"], 8000)
        assert "Directory listing" in curl(f"http://127.0.0.1:{port}/")
    finally:
        pw("rm", "-f", name, check=False)


def test_start_takes_another_address_when_its_own_was_taken(net: str) -> None:
    name, other = _web(net, free_port()), None
    try:
        ip = inspect(name)["NetworkSettings"]["IPAddress"]
        pw("stop", "-t", "1", name)
        assert wait_until(lambda: inspect(name)["State"]["Status"] == "exited")
        other = _web(net, free_port())  # the lowest free address: the one just given back
        assert inspect(other)["NetworkSettings"]["IPAddress"] == ip
        pw("start", name)
        mine = inspect(name)["NetworkSettings"]["IPAddress"]
        assert mine and mine != ip
        wait_tcp(None, mine, 8000)
    finally:
        for n in (name, other):
            if n:
                pw("rm", "-f", n, check=False)


def test_start_that_cannot_take_its_port_leaves_it_stopped(net: str) -> None:
    port = free_port()
    name = _web(net, port)
    squatter = socket.socket()
    try:
        pw("stop", "-t", "1", name)
        assert wait_until(lambda: inspect(name)["State"]["Status"] == "exited")
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        r = pw("start", name, check=False)
        assert r.returncode != 0 and str(port) in r.stderr and len(r.stderr.strip().splitlines()) == 1
        info = inspect(name)  # still there, still stopped, still startable
        assert info["State"]["Status"] == "exited"
        squatter.close()
        pw("start", name)
        assert inspect(name)["State"]["Running"]
        missing = pw("start", uniq("nosuch"), check=False)
        assert missing.returncode == 3 and len(missing.stderr.strip().splitlines()) == 1
    finally:
        squatter.close()
        pw("rm", "-f", name, check=False)


def _prune_in_a_terminal(answer: bytes) -> str:
    """Run ``prune`` with a pseudo-terminal as stdin/stdout, as a person would, and answer."""
    leader, follower = os.openpty()
    try:
        p = subprocess.Popen(
            [sys.executable, "-m", "portwright", "prune"], stdin=follower, stdout=follower, stderr=follower
        )
        os.close(follower)
        seen = b""
        while b"[y/N]" not in seen:
            chunk = os.read(leader, 4096)
            assert chunk, seen
            seen += chunk
        os.write(leader, answer)
        assert p.wait(timeout=60) == 0
        try:
            while chunk := os.read(leader, 4096):
                seen += chunk
        except OSError:
            pass  # EIO: the terminal's last user has gone
        return seen.decode(errors="replace")
    finally:
        os.close(leader)


def test_prune_asks_first(net: str) -> None:
    name = uniq("pr")
    pw("run", "-d", "--name", name, "--network", "none", "--", "true")
    try:
        assert wait_until(lambda: inspect(name)["State"]["Status"] == "exited")
        r = pw("prune", check=False)  # stdin is not a terminal here
        assert r.returncode == 2 and "-f" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert inspect(name)["State"]["Status"] == "exited"
        assert "Are you sure" in _prune_in_a_terminal(b"n\n")
        assert inspect(name)["State"]["Status"] == "exited"  # "n" keeps it
        assert f"removed exited sandbox: {name}" in _prune_in_a_terminal(b"y\n")
        assert pw("inspect", name, check=False).returncode == 3
        pw("run", "-d", "--name", name, "--network", "none", "--", "true")
        assert wait_until(lambda: inspect(name)["State"]["Status"] == "exited")
        assert f"removed exited sandbox: {name}" in pw("prune", "-f").stdout
    finally:
        pw("rm", "-f", name, check=False)
