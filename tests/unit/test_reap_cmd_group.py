"""The fork server's reaper kills CMD's process group when there is no cgroup to kill: a Python
supervisor killed with -9 left CMD running where cgroup2 is not mounted (inside 'ip netns exec',
which remounts /sys), and its sandbox's rm -f left the process for good."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from portwright.engine import Engine
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend
from portwright.kernel.fake import FakeHost
from portwright.model import Sandbox
from portwright.state import State, proc_start_time


def _record(st: State, cmd_pid: int, cmd_start: int | None, supervisor_pid: int) -> None:
    sb = Sandbox(id="e" * 12, name="reaped", network="none", netns=None, veth=None)
    with st.tx():
        st.insert_sandbox(sb, ["sleep", "60"], {"detach": True}, status="running")
        st.update_sandbox(sb.id, supervisor_pid=supervisor_pid, cmd_pid=cmd_pid, cmd_start=cmd_start)


def _gone(p: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if p.poll() is not None:
            return True
        time.sleep(0.02)
    return False


def test_the_reaper_kills_cmds_process_group(tmp_path: Path) -> None:
    cmd = subprocess.Popen(["sleep", "60"], start_new_session=True)  # CMD leads its own group
    try:
        e = Engine(State(str(tmp_path)), firewall=Firewall(FakeBackend()), host=FakeHost())
        _record(e.state, cmd.pid, proc_start_time(cmd.pid), supervisor_pid=4242)
        assert e.reap(4242, None) == "reaped"
        assert _gone(cmd), "CMD outlived its reaped supervisor"
    finally:
        cmd.kill()
        cmd.wait()


def test_a_reused_pid_is_left_alone(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        e = Engine(State(str(tmp_path)), firewall=Firewall(FakeBackend()), host=FakeHost())
        start = proc_start_time(stranger.pid)
        assert start is not None
        _record(e.state, stranger.pid, start + 1, supervisor_pid=4243)  # another start time: not CMD
        e.reap(4243, None)
        time.sleep(0.1)
        assert stranger.poll() is None and os.getpgid(stranger.pid) == stranger.pid
    finally:
        stranger.kill()
        stranger.wait()
