"""The bench's only way into sandboxes: the ``portwright`` command line, run as a subprocess.

Owns the calls ``network create/rm``, ``run -d``, ``inspect --format json``, ``exec`` and
``rm -f``. Going through the public CLI (the binary next to ``sys.executable``) keeps the bench
honest: it measures what a user gets, and it does not depend on engine internals.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from ..errors import BadInput, Conflict, KernelError, MissingTool, NotFound, PortwrightError


def portwright_binary() -> str:
    """``portwright`` in the same bin directory as this interpreter, else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "portwright")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("portwright")
    if found is None:
        raise MissingTool("portwright", "portwright (pip install -e .)")
    return found


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """What the bench needs from ``portwright inspect``."""

    name: str
    ip: str | None
    pid: int | None  # the sandbox command's pid
    supervisor_pid: int | None  # holds reservations; relays in proxy mode
    netns: str | None
    ports: tuple[dict[str, object], ...]


def parse_inspect(text: str) -> SandboxInfo:
    doc = json.loads(text)
    if isinstance(doc, list):  # tolerate docker's list shape
        doc = doc[0]
    state = doc.get("State") or {}
    net = doc.get("NetworkSettings") or {}

    def pid(v: object) -> int | None:
        try:
            n = int(str(v))
        except ValueError:
            return None
        return n if n > 0 else None

    return SandboxInfo(name=str(doc.get("Name", "")).lstrip("/"), ip=net.get("IPAddress") or None,
                       pid=pid(state.get("Pid")), supervisor_pid=pid(state.get("SupervisorPid")),
                       netns=net.get("SandboxKey") or None, ports=tuple(net.get("Ports") or ()))


class Portwright:
    """Thin wrapper over the CLI; every failure becomes a one-line PortwrightError."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or portwright_binary()

    def call(self, *args: str, timeout: float = 120) -> str:
        cmd = [self.binary, *args]
        try:
            # cwd "/": a stray module in the caller's directory must not shadow the stdlib in
            # the portwright processes (python puts the cwd first on sys.path for -m).
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL, cwd="/")
        except subprocess.TimeoutExpired as e:
            raise KernelError(f"portwright {' '.join(args[:2])}", f"timed out after {timeout:.0f}s") from e
        if p.returncode != 0:
            msg = (p.stderr.strip() or p.stdout.strip() or f"exit status {p.returncode}").splitlines()[-1]
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

    def run(self, name: str, network: str, cmd: list[str], publish: list[str] | None = None,
            mode: str | None = None, timeout: float = 120) -> str:
        args = ["run", "-d", "--name", name, "--network", network]
        for p in publish or []:
            args += ["-p", p]
        if mode:
            args += ["--publish-mode", mode]
        return self.call(*args, "--", *cmd, timeout=timeout).strip()

    def inspect(self, name: str) -> SandboxInfo:
        return parse_inspect(self.call("inspect", name, "--format", "json"))

    def exec(self, name: str, cmd: list[str], timeout: float = 30) -> str:
        return self.call("exec", name, "--", *cmd, timeout=timeout)

    def exec_command(self, name: str, cmd: list[str]) -> list[str]:
        """The argv that runs ``cmd`` in the sandbox, for callers that need their own Popen."""
        return [self.binary, "exec", name, "--", *cmd]

    def rm(self, name: str, timeout: float = 300) -> None:
        self.call("rm", "-f", name, timeout=timeout)

    def rm_quiet(self, name: str, errors: list[str], timeout: float = 300) -> None:
        """Teardown helper: remove and collect the error instead of raising."""
        try:
            self.rm(name, timeout=timeout)
        except PortwrightError as e:
            if not isinstance(e, NotFound):
                errors.append(str(e))
