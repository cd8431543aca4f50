"""Running programs: the one module that starts them (the bench's ``bench/driver.py`` has its own).

portwright drives system tools (``ip``, ``nft``, ``conntrack``, ``iptables``) and starts a few
programs of its own in the background. Each of these can fail in the same few ways, and a user
should see each failure the same way, whichever caller hit it:

- the tool is not installed: ``MissingTool`` naming the Debian package that brings it
  (``TOOL_PACKAGES``), checked before anything runs;
- the tool hangs: ``KernelError`` naming the command and the timeout (``run`` always has one);
- the program cannot be started at all (permissions, a bad interpreter): ``KernelError`` with
  the OS error.

A non-zero exit status is the caller's to judge, because what it means differs per tool
(``conntrack -D`` finding nothing is not an error; a missing DOCKER-USER chain means "no
dockerd"). ``check=True``, and ``failure`` for callers that look first, map it to the usual
error: ``NeedRoot`` on EPERM, otherwise ``KernelError`` with the command and its stderr.

``run(..., netns=NAME)`` runs a tool under ``ip netns exec NAME`` (a namespace bind-mounted under
/run/netns). ``call(..., netns_path=PATH)`` enters a namespace by path (``/run/netns/X``,
``/proc/PID/ns/net``) in the child before exec, for interactive commands (``portwright exec``).
``spawn_detached`` starts a long-lived background process in its own session.

A ruff rule (TID251 in pyproject.toml) keeps ``subprocess`` out of every other module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from subprocess import CompletedProcess
from typing import Any, Literal, overload

from ..errors import KernelError, MissingTool, NeedRoot
from . import netns as _netns

__all__ = [
    "CompletedProcess",
    "DEFAULT_TIMEOUT",
    "TOOL_PACKAGES",
    "available",
    "call",
    "failure",
    "package_of",
    "require",
    "run",
    "spawn_detached",
]

#: Seconds a tool may run before it counts as hung; the callers that expect long runs pass their own.
DEFAULT_TIMEOUT = 60.0
#: The Debian package that brings each tool (MissingTool names it). Unknown tools: their own name.
TOOL_PACKAGES = {
    "ip": "iproute2",
    "nft": "nftables",
    "conntrack": "conntrack",
    "iptables": "iptables",
    "ip6tables": "iptables",
}


def package_of(tool: str) -> str:
    name = os.path.basename(tool)
    return TOOL_PACKAGES.get(name, name)


def available(tool: str) -> bool:
    """Is ``tool`` on PATH (or, given as a path, an executable file)?"""
    return shutil.which(tool) is not None


def resolved(tool: str) -> str | None:
    """The file ``tool`` runs in the end (symlinks and Debian's alternatives followed), or None."""
    path = shutil.which(tool)
    return os.path.realpath(path) if path is not None else None


def require(tool: str) -> None:
    """Raise MissingTool (naming the package) unless ``tool`` is available."""
    if not available(tool):
        raise MissingTool(os.path.basename(tool), package_of(tool))


def _full_argv(argv: Sequence[str], netns: str | None) -> list[str]:
    if not argv:
        raise ValueError("runner: empty argv")
    require(argv[0])
    if netns:
        require("ip")
        return ["ip", "netns", "exec", netns, *argv]
    return list(argv)


def _what(argv: Sequence[str], netns: str | None) -> str:
    """The command as an error names it: its first words, and the namespace it ran in."""
    return " ".join(argv[:4]) + (f" (in netns {netns})" if netns else "")


def failure(p: CompletedProcess[Any]) -> KernelError | NeedRoot:
    """The error for a tool that exited non-zero: NeedRoot on EPERM, else KernelError naming the
    command with its stderr (or exit status)."""
    err = p.stderr.decode(errors="replace") if isinstance(p.stderr, bytes) else (p.stderr or "")
    cmd = " ".join(str(a) for a in p.args) if isinstance(p.args, list | tuple) else str(p.args)
    if "Operation not permitted" in err:
        return NeedRoot(cmd)
    return KernelError(cmd, err or f"exit {p.returncode}")


@overload
def run(
    argv: Sequence[str],
    *,
    input: str | None = ...,
    timeout: float | None = ...,
    netns: str | None = ...,
    check: bool = ...,
    text: Literal[True] = ...,
) -> CompletedProcess[str]: ...
@overload
def run(
    argv: Sequence[str],
    *,
    input: bytes | None = ...,
    timeout: float | None = ...,
    netns: str | None = ...,
    check: bool = ...,
    text: Literal[False],
) -> CompletedProcess[bytes]: ...
def run(
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    netns: str | None = None,
    check: bool = False,
    text: bool = True,
) -> CompletedProcess[Any]:
    """Run a tool to completion with stdout and stderr captured (stdin: ``input``, else empty).

    ``netns``: run it under ``ip netns exec NETNS``. ``check``: raise ``failure(p)`` on a
    non-zero exit status. Raises MissingTool, or KernelError on a timeout or a failed start.
    """
    full = _full_argv(argv, netns)
    try:
        p = subprocess.run(
            full,
            input=input,
            capture_output=True,
            text=text,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL if input is None else None,
        )
    except subprocess.TimeoutExpired as e:
        raise KernelError(_what(argv, netns), f"timed out after {timeout:g}s") from e
    except OSError as e:  # found but not startable (say, a script whose interpreter is missing)
        raise KernelError(_what(argv, netns), str(e), e.errno) from None
    if check and p.returncode != 0:
        raise failure(p)
    return p


def call(
    argv: Sequence[str],
    *,
    netns_path: str | None = None,
    env: dict[str, str] | None = None,
    setup: Callable[[], None] | None = None,
    stdin_null: bool = False,
) -> int:
    """Run a user's command in the foreground, on this terminal (no capture, no timeout), in the
    network namespace at ``netns_path`` if given, with ``env`` as its whole environment if given
    (default: ours); its exit status.

    It is the user's program, not a tool of ours, so a missing one raises FileNotFoundError for
    the caller to word (there is no package to name). ``setup`` runs in the child after setns,
    before exec (``kernel.caps.child_setup``). ``stdin_null``: it reads /dev/null, not our stdin.
    """
    path = netns_path

    def pre() -> None:
        if path:
            _netns.setns(path)
            _netns.bind_etc(path)  # the sandbox's resolv.conf, as 'ip netns exec' mounts it
        if setup is not None:
            setup()

    try:
        return subprocess.call(
            list(argv),
            preexec_fn=pre if path or setup else None,
            env=env,
            stdin=subprocess.DEVNULL if stdin_null else None,
        )
    except subprocess.SubprocessError:  # the child said why on stderr (kernel.caps.child_setup)
        raise KernelError(_what(argv, netns_path), "preparing the command in the child failed") from None


def spawn_detached(
    argv: Sequence[str],
    *,
    log_path: str | None,
    cwd: str = "/",
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    what: str | None = None,
) -> int:
    """Start a long-lived background process; its pid. Nothing waits for it here.

    It gets its own session (a terminal's Ctrl-C or hang-up does not reach it), stdin from
    /dev/null, stdout and stderr appended to ``log_path`` (``None``: discarded), no descriptors of
    ours but ``pass_fds``. ``env``: its whole environment (default: ours). ``what`` names it in
    the KernelError raised when it cannot be started (default: "starting ARGV0").
    """
    full = _full_argv(argv, None)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    out = os.open(log_path, flags, 0o640) if log_path else os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        proc = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=cwd,
            env=env,
            pass_fds=tuple(pass_fds),
            close_fds=True,
            start_new_session=True,
        )
    except OSError as e:
        raise KernelError(what or f"starting {argv[0]}", str(e), e.errno) from None
    finally:
        os.close(out)
    return proc.pid
