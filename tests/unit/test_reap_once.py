"""A dead supervisor's sandbox is torn down once, by whoever comes first of the fork server's
reaper and a command's reconcile, and never after it runs again.

The reaper has collected the supervisor (so it is no longer a zombie that reconcile would leave
to it) and may still be tearing down when ``restart``'s stop reconciles. Both used to tear down,
and the slower one then deleted the netns of the sandbox that ``restart`` had just started under
the same ID, and marked it exited with its CMD running (CI's ``test_restart_a_running_sandbox``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from portwright.engine import Engine
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend
from portwright.kernel.fake import FakeHost
from portwright.model import Sandbox
from portwright.spec import SandboxSpec
from portwright.state import State

SID = "f" * 12
NETNS = "pw-once"
DEAD = 4242  # its recorded start time matches no process: dead even if the pid is reused


class SlowHost(FakeHost):
    """A host whose netns deletion takes a while and is written down, one line per deletion,
    in a file that every process sees."""

    def __init__(self, log: Path, pause: float) -> None:
        super().__init__()
        self.log, self.pause = log, pause

    def netns_delete(self, name: str) -> None:
        with open(self.log, "a") as f:
            f.write(f"start {os.getpid()}\n")
        time.sleep(self.pause)
        with open(self.log, "a") as f:
            f.write(f"netns_delete {name} {os.getpid()}\n")
        super().netns_delete(name)


def _engine(tmp_path: Path, pause: float = 0.0) -> Engine:
    host = SlowHost(tmp_path / "teardowns", pause)
    return Engine(State(str(tmp_path / "state")), firewall=Firewall(FakeBackend()), host=host)


def _record(st: State, supervisor_pid: int, status: str = "running") -> None:
    sb = Sandbox(id=SID, name="once", network="none", netns=f"/run/netns/{NETNS}", veth=None)
    with st.tx():
        spec = SandboxSpec(cmd=("sleep", "60"), detach=True).to_json()
        st.insert_sandbox(sb, ["sleep", "60"], spec, status=status)
        st.update_sandbox(SID, supervisor_pid=supervisor_pid, supervisor_start=-1)


def _deletions(tmp_path: Path) -> list[str]:
    log = tmp_path / "teardowns"
    return (
        [ln for ln in log.read_text().splitlines() if ln.startswith("netns_delete")] if log.exists() else []
    )


def _wait_for(path: Path, text: str) -> None:
    deadline = time.monotonic() + 10
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.01)


def test_reconcile_during_the_reapers_teardown_leaves_it_to_the_reaper(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    _record(_engine(tmp_path).state, DEAD)
    reaper = os.fork()
    if reaper == 0:  # the fork server's reaper, in the middle of a slow teardown
        code = 1
        try:
            code = 0 if _engine(tmp_path, pause=0.5).reap(DEAD, 0) == "once" else 3
        finally:
            os._exit(code)
    try:
        _wait_for(tmp_path / "teardowns", "start")
        e = _engine(tmp_path)
        assert e.reconcile(restore=False) == []  # waited for the reaper, then found it exited
        rec = e.state.sandbox("once")
        assert rec.status == "exited" and rec.exit_code == 0
    finally:
        _, status = os.waitpid(reaper, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(_deletions(tmp_path)) == 1, _deletions(tmp_path)


def test_a_late_reaper_leaves_the_sandbox_started_again(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    e = _engine(tmp_path)
    _record(e.state, supervisor_pid=os.getpid())  # running again, under a live supervisor
    assert e._tear_down_dead(SID, DEAD, 0) is None  # the old supervisor's teardown comes too late
    assert e.reap(DEAD, 0) is None
    rec = e.state.sandbox("once")
    assert rec.status == "running" and rec.supervisor_pid == os.getpid()
    assert _deletions(tmp_path) == []


def test_the_first_to_come_tears_down_and_the_second_finds_nothing(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    e = _engine(tmp_path)
    _record(e.state, DEAD)
    assert e._tear_down_dead(SID, DEAD, 7) == []
    assert e._tear_down_dead(SID, DEAD, None) is None
    assert e.reap(DEAD, 9) is None
    rec = e.state.sandbox("once")
    assert rec.status == "exited" and rec.exit_code == 7
    assert len(_deletions(tmp_path)) == 1
