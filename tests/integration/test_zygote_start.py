"""The fork server starts once per state directory, early, and never twice (#11): detached runs
started at the same moment against a state directory with no server running all succeed through
one server (each command line starts it early, through ``entry``, before the CLI's imports); a
server killed with -9 while its sandboxes run is replaced by the next run (the sandboxes, which
are its children, do not keep its lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from proxynet import wait_until

import pwstate
from portwright.zygotestart import pid_path

pytestmark = pytest.mark.integration


@pytest.fixture
def state() -> Iterator[str]:
    d = pwstate.private_state_dir("pw-zst-")
    try:
        yield d
    finally:
        _pw(d, "rm", "-f", *_names(d))
        _pw(d, "network", "rm", "zst")
        for pid in _servers(d):
            os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: not _servers(d), timeout=10)
        pwstate.discard(d)


def _pw(d: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PORTWRIGHT_STATE_DIR": d}
    return subprocess.run(
        [sys.executable, "-m", "portwright", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _names(d: str) -> list[str]:
    return [n for n in _pw(d, "ps", "-a", "--format", "{{.Names}}").stdout.split() if n]


def _servers(d: str) -> list[int]:
    """pw-zygote processes serving ``d`` (named so, with a title that names the directory); not
    their children (reapers), which keep both until they exit."""
    named: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace").split()
            with open(f"/proc/{pid}/stat") as f:
                comm, rest = f.read().split("(", 1)[1].rsplit(")", 1)
        except (OSError, ValueError, IndexError):
            continue
        if comm == "pw-zygote" and d in title:
            named[int(pid)] = int(rest.split()[1])
    return [pid for pid, ppid in named.items() if ppid not in named]


def _detached(d: str, name: str, *flags: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PORTWRIGHT_STATE_DIR": d}
    argv = [sys.executable, "-m", "portwright", "run", "-d", "--name", name, *flags]
    return subprocess.Popen(
        [*argv, "--", "sleep", "300"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


#: A sandbox whose supervisor stays Python (it relays): a child of the server that never execs.
RELAYED = ("--network", "zst", "--publish-mode", "proxy", "-p", "127.0.0.1::8000")


def test_simultaneous_cold_runs_share_one_server_and_a_killed_one_is_replaced(state: str) -> None:
    assert _pw(state, "network", "create", "zst").returncode == 0
    first = _pw(state, "run", "-d", "--name", "z0", "--network", "none", "--", "sleep", "300")
    assert first.returncode == 0, first.stderr
    for pid in _servers(state):  # no server running, but the state directory exists: early starts
        os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not _servers(state), timeout=10)
    runs = [_detached(state, f"z{i}", *(RELAYED if i == 1 else ("--network", "none"))) for i in range(1, 4)]
    for p in runs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert len(_servers(state)) == 1, _servers(state)
    ps = _pw(state, "ps", "--format", "{{.Names}} {{.Status}}").stdout.splitlines()
    assert sorted(line.split()[0] for line in ps if " Up " in f" {line} ") == ["z0", "z1", "z2", "z3"]
    # kill -9 the server; its sandboxes live on, and must not keep it looking alive
    with open(pid_path(state)) as f:
        os.kill(int(f.read()), signal.SIGKILL)
    assert wait_until(lambda: not _servers(state), timeout=10)
    again = _pw(state, "run", "-d", "--name", "z4", "--network", "none", "--", "sleep", "300")
    assert again.returncode == 0, again.stderr
    assert len(_servers(state)) == 1, [(p, open(f"/proc/{p}/stat").read()) for p in _servers(state)]
    assert len([n for n in _names(state) if n.startswith("z")]) == 5
