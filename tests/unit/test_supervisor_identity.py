"""Supervisor.setup is a library call (the foreground ``run`` and tests use it in-process): it must
not rename the process that calls it. Only ``supervisor.run``, which owns its process, titles it
``portwright _supervise NAME``; a renamed test process made `who` report the test's own listening
socket as portwright's (test_who_host_program_and_bad_input, after test_lifecycle_faults)."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import pytest

from portwright import supervisor
from portwright.errors import KernelError
from portwright.spec import SandboxSpec, parse_sandbox_spec


def identity() -> tuple[bytes, bytes]:
    with open("/proc/self/comm", "rb") as c, open("/proc/self/cmdline", "rb") as a:
        return c.read(), a.read()


class CreatedThenFails:
    """An engine whose create succeeds (and registers its rollback), as the real one does before
    the supervisor's own steps run."""

    def __init__(self, state_dir: Path) -> None:
        self.state = SimpleNamespace(dir=str(state_dir))
        self.rolled_back = False

    def create(self, spec: SandboxSpec, stack: ExitStack, supervisor_pid: int) -> SimpleNamespace:
        stack.callback(setattr, self, "rolled_back", True)
        sandbox = SimpleNamespace(id="0" * 64, name="pwt-identity", netns=None)
        return SimpleNamespace(sandbox=sandbox, cgroup=None, publisher=None, log_path=None)


def test_setup_leaves_the_callers_process_name_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(state_dir: str, sid: str) -> None:
        raise KernelError("serving the control socket", "injected")

    monkeypatch.setattr(supervisor, "serve_control", refuse)
    engine = CreatedThenFails(tmp_path)
    spec = parse_sandbox_spec([sys.executable, "-c", "pass"], name="pwt-identity")
    before = identity()
    with pytest.raises(KernelError, match="injected"):
        supervisor.Supervisor(spec, engine).setup()  # type: ignore[arg-type]
    assert engine.rolled_back  # setup got past create, where the title used to be set
    assert identity() == before


class Held:
    """Supervisor's stand-in for run(): set up, CMD exits 0, nothing to report at teardown."""

    def __init__(self, spec: SandboxSpec) -> None:
        self.live: SimpleNamespace | None = None
        self.spec = spec

    def setup(self) -> str:
        self.live = SimpleNamespace(sandbox=SimpleNamespace(name="pwt-titled"))
        return "0" * 64

    def wait(self) -> int:
        return 0

    def teardown(self, exit_code: int | None) -> list[str]:
        return []


def test_run_titles_the_process_it_owns(monkeypatch: pytest.MonkeyPatch) -> None:
    """run() is the entry point of a foreground sandbox's process: it names it (in a forked child
    here, so that this test's own process keeps its name)."""
    monkeypatch.setattr(supervisor, "Supervisor", Held)
    spec = parse_sandbox_spec([sys.executable, "-c", "pass"], name="pwt-titled")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            code = supervisor.run(spec)
            comm, cmdline = identity()
            os.write(w, comm + b"|" + cmdline)
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    comm, _, cmdline = got.partition(b"|")
    assert comm == b"portwright\n"
    assert cmdline.split(b"\0")[0].rstrip(b" ") == b"portwright _supervise pwt-titled"
