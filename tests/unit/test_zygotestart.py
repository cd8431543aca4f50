"""One fork server per state directory, and one start at a time (``zygotestart``): a started
server holds the lock from the moment it is spawned, so a second starter waits for it; the lock
goes when the server dies, however it dies; a server started by hand takes it itself, or exits
when another holds it. A stand-in process plays the server (nothing here needs root)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from portwright import zygotestart
from portwright.kernel import runner

HOLD = "import time; time.sleep(60)"  # a stand-in server: it only keeps what it inherited


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Servers spawned as stand-ins (same environment and descriptors); killed at the end."""
    pids: list[int] = []
    real = runner.spawn_detached

    def spawn(argv: list[str], **kw: Any) -> int:
        assert argv[-2:][0] == "_zygote" and kw["pass_fds"]
        assert kw["env"][zygotestart.LOCK_FD_ENV] == str(kw["pass_fds"][0])
        pid = real([sys.executable, "-c", HOLD], **kw)
        pids.append(pid)
        return pid

    monkeypatch.setattr(runner, "spawn_detached", spawn)
    yield pids
    for pid in pids:
        _kill(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.01)


def test_one_start_at_a_time(tmp_path: Path, stand_ins: list[int]) -> None:
    d = str(tmp_path)
    assert zygotestart.start_unless_running(d) is True
    assert zygotestart.start_unless_running(d) is False  # starting (no socket yet): wait for it
    assert zygotestart.start_unless_running(d) is False
    assert len(stand_ins) == 1
    assert zygotestart.try_connect(d) is None
    _kill(stand_ins[0])  # died while starting: the lock goes with it
    assert zygotestart.start_unless_running(d) is True
    assert len(stand_ins) == 2
    assert oct(os.stat(zygotestart.lock_path(d)).st_mode & 0o777) == "0o600"


def test_a_failed_start_leaves_the_lock_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(argv: list[str], **kw: Any) -> int:
        raise runner.KernelError("starting the fork server", "no such file")

    monkeypatch.setattr(runner, "spawn_detached", broken)
    with pytest.raises(runner.KernelError):
        zygotestart.start_unless_running(str(tmp_path))
    fd = zygotestart.hold_lock(str(tmp_path))  # nobody holds it
    assert fd is not None
    os.close(fd)


def _hold_lock_in_child(d: str, env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> str:
    code = (
        "import os, sys; from portwright import zygotestart as z; "
        "fd = z.hold_lock(sys.argv[1]); "
        "print('none' if fd is None else ('inheritable' if os.get_inheritable(fd) else 'held'), "
        "os.environ.get(z.LOCK_FD_ENV))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, d],
        env=env,
        pass_fds=pass_fds,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_the_server_keeps_the_lock_it_inherited_and_gives_it_to_no_child(tmp_path: Path) -> None:
    d = str(tmp_path)
    fd = zygotestart._open_lock(d)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        env = {**os.environ, zygotestart.LOCK_FD_ENV: str(fd)}
        # inherited: kept, not passed on to what it runs, and gone from its environment
        assert _hold_lock_in_child(d, env, (fd,)) == "held None"
        # started by hand while another holds the lock: it must exit
        env.pop(zygotestart.LOCK_FD_ENV)
        assert _hold_lock_in_child(d, env) == "none None"
    finally:
        os.close(fd)
    assert _hold_lock_in_child(d, dict(os.environ)) == "held None"  # by hand, nobody else: takes it
