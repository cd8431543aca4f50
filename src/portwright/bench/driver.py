"""The bench's process driver: every program the bench runs goes through here.

Two layers. ``run`` (a command to completion: exit status, output, a timeout that is reported,
not raised) and ``spawn`` (a long-running ``Child``: servers, docker-proxy, dockerd) are the only
places in ``bench/`` that touch ``subprocess``. ``Portwright`` is the bench's only way into
sandboxes: the ``portwright`` command line (``network create/rm``, ``run -d``, ``inspect``,
``exec``, ``rm -f``). Going through the public CLI (the binary next to ``sys.executable``) keeps
the bench honest: it measures what a user gets, and it does not depend on engine internals.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import BadInput, Conflict, KernelError, MissingTool, NotFound, PortwrightError

# ---- running programs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Done:
    """A finished command. ``returncode`` is -1 when it timed out (``timed_out``); what it had
    printed by then is kept."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def why(self) -> str:
        """One line saying why it failed (its last stderr line, else stdout's, else the status)."""
        text = self.stderr.strip() or self.stdout.strip() or f"exit status {self.returncode}"
        return text.splitlines()[-1][:300]


def _text(x: str | bytes | None) -> str:
    return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")


def run(
    argv: Sequence[str],
    *,
    timeout: float = 120,
    input: str | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Done:
    """Run ``argv`` to completion with its output captured (text). Never raises for a non-zero
    exit or a timeout (the child is killed); raises OSError when the program cannot start."""
    try:
        p = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            cwd=cwd,
            env=None if env is None else dict(env),
        )
    except subprocess.TimeoutExpired as e:
        return Done(tuple(argv), -1, _text(e.stdout), f"timed out after {timeout:.0f}s", timed_out=True)
    return Done(tuple(argv), p.returncode, p.stdout, p.stderr)


def version_of(argv: Sequence[str]) -> str:
    """The first line a ``--version``-style command prints, or "missing"."""
    try:
        d = run(argv, timeout=5)
    except OSError:
        return "missing"
    if d.timed_out:
        return "missing"
    text = (d.stdout + d.stderr).strip().splitlines()
    return text[0] if text else "unknown"


class Child:
    """A long-running process the bench started (a server, a proxy, a daemon)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._p = popen
        self.pid = popen.pid

    def poll(self) -> int | None:
        return self._p.poll()

    @property
    def running(self) -> bool:
        return self._p.poll() is None

    def send(self, sig: int) -> None:
        if self._p.poll() is None:
            try:
                self._p.send_signal(sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit status, or None if it is still running after ``timeout`` seconds."""
        try:
            return self._p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10, sig: int = signal.SIGTERM) -> bool:
        """``sig``, then SIGKILL after ``timeout`` seconds; True when it had to be killed."""
        self.send(sig)
        if self.wait(timeout) is not None:
            return False
        self._p.kill()
        self._p.wait()
        return True


def spawn(
    argv: Sequence[str],
    *,
    ready_fd: int | None = None,
    log_path: str | None = None,
    new_session: bool = False,
    env: Mapping[str, str] | None = None,
) -> Child:
    """Start ``argv`` with stdin from /dev/null and output discarded (or appended to
    ``log_path``). ``ready_fd``: a pipe's write end the child gets as fd 3 (dockerd's readiness
    contract with docker-proxy). Raises OSError when it cannot start."""
    out: int | object = subprocess.DEVNULL
    logf = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed below, the child keeps its copy
    if logf is not None:
        out = logf
    try:
        kw: dict[str, object] = {}
        if ready_fd is not None:
            fd = ready_fd

            def child_setup() -> None:
                os.dup2(fd, 3)  # dup2 makes fd 3 inheritable; ready_fd itself is close-on-exec

            kw = {"pass_fds": (3,), "preexec_fn": child_setup}
        p = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if logf is not None else subprocess.DEVNULL,
            start_new_session=new_session,
            env=None if env is None else dict(env),
            **kw,
        )  # type: ignore[call-overload]
    finally:
        if logf is not None:
            logf.close()
    return Child(p)


def wait_until(pred: Callable[[], object], timeout: float, every: float = 0.1) -> bool:
    """Poll ``pred()`` until it is true or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return bool(pred())


def tool_binary(name: str, package: str = "portwright (pip install -e .)") -> str:
    """``name`` in the same bin directory as this interpreter (portwright's own console
    scripts), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(here, os.X_OK):
        return here
    found = shutil.which(name)
    if found is None:
        raise MissingTool(name, package)
    return found


def portwright_binary() -> str:
    """``portwright`` in the same bin directory as this interpreter, else on PATH."""
    return tool_binary("portwright")


# ---- the portwright CLI --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """What the bench needs from ``portwright inspect``."""

    name: str
    ip: str | None
    pid: int | None  # the sandbox command's pid
    supervisor_pid: int | None  # holds reservations; relays in proxy mode
    netns: str | None
    ports: tuple[dict[str, object], ...]


def _info(doc: dict[str, object]) -> SandboxInfo:
    state = doc.get("State") or {}
    net = doc.get("NetworkSettings") or {}
    assert isinstance(state, dict) and isinstance(net, dict)

    def pid(v: object) -> int | None:
        try:
            n = int(str(v))
        except ValueError:
            return None
        return n if n > 0 else None

    return SandboxInfo(
        name=str(doc.get("Name", "")).lstrip("/"),
        ip=net.get("IPAddress") or None,
        pid=pid(state.get("Pid")),
        supervisor_pid=pid(state.get("SupervisorPid")),
        netns=net.get("SandboxKey") or None,
        ports=tuple(net.get("Mappings") or ()),
    )


def parse_inspect_all(text: str) -> list[SandboxInfo]:
    """``portwright inspect A B ...`` output (a JSON array; one object, as older releases printed
    for one name, is read too)."""
    doc = json.loads(text)
    return [_info(d) for d in (doc if isinstance(doc, list) else [doc])]


def parse_inspect(text: str) -> SandboxInfo:
    return parse_inspect_all(text)[0]  # tolerates docker's list shape


class Portwright:
    """Thin wrapper over the CLI; every failure becomes a one-line PortwrightError."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or portwright_binary()

    def call(self, *args: str, timeout: float = 120) -> str:
        # cwd "/": a stray module in the caller's directory must not shadow the stdlib in
        # the portwright processes (python puts the cwd first on sys.path for -m).
        p = run([self.binary, *args], timeout=timeout, cwd="/")
        if p.timed_out:
            raise KernelError(f"portwright {' '.join(args[:2])}", f"timed out after {timeout:.0f}s")
        if p.returncode != 0:
            msg = p.why()
            what = f"portwright {' '.join(args[:3])}"
            if p.returncode == 2:
                raise BadInput(f"{what}: {msg}")
            if p.returncode == 3:
                raise NotFound(f"{what}: {msg}")
            if p.returncode == 4:
                raise Conflict(f"{what}: {msg}")
            raise KernelError(what, msg, None)
        return p.stdout

    def network_create(self, name: str, subnet: str) -> None:
        self.call("network", "create", name, "--subnet", subnet)

    def network_rm(self, name: str) -> None:
        self.call("network", "rm", name)

    def run(
        self,
        name: str,
        network: str,
        cmd: list[str],
        publish: list[str] | None = None,
        mode: str | None = None,
        timeout: float = 120,
        flags: Sequence[str] = (),
    ) -> str:
        args = ["run", "-d", "--name", name, "--network", network, *flags]
        for p in publish or []:
            args += ["-p", p]
        if mode:
            args += ["--publish-mode", mode]
        return self.call(*args, "--", *cmd, timeout=timeout).strip()

    def inspect(self, name: str) -> SandboxInfo:
        return parse_inspect(self.call("inspect", name))

    def inspect_all(self, names: list[str]) -> list[SandboxInfo]:
        """One ``inspect`` call for many sandboxes."""
        return parse_inspect_all(self.call("inspect", *names))

    def exec(self, name: str, cmd: list[str], timeout: float = 30) -> str:
        return self.call("exec", name, "--", *cmd, timeout=timeout)

    def exec_command(self, name: str, cmd: list[str]) -> list[str]:
        """The argv that runs ``cmd`` in the sandbox, for callers that need their own Popen."""
        return [self.binary, "exec", name, "--", *cmd]

    def rm(self, name: str, *more: str, timeout: float = 300) -> None:
        """``portwright rm -f`` of one or more sandboxes, in ONE command."""
        self.call("rm", "-f", name, *more, timeout=timeout)

    def rm_quiet(self, name: str, errors: list[str], timeout: float = 300) -> None:
        """Teardown helper: remove and collect the error instead of raising."""
        try:
            self.rm(name, timeout=timeout)
        except PortwrightError as e:
            if not isinstance(e, NotFound):
                errors.append(str(e))
