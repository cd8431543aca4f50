"""The error hierarchy: every failure a user can see is one of these.

Each carries a one-line, actionable message. The CLI prints ``str(err)`` and exits with
``err.exit_code``; no traceback reaches a user for a PortwrightError.
"""

from __future__ import annotations


class PortwrightError(Exception):
    """Base class. ``str()`` is the one line the user sees."""

    exit_code = 1


class BadInput(PortwrightError, ValueError):
    """The user's input is malformed or out of range (names the input and the fix)."""

    exit_code = 2


class NotFound(PortwrightError):
    """A named sandbox, network or mapping does not exist."""

    exit_code = 3


class Conflict(PortwrightError):
    """A name, subnet or address that must be unique is already taken."""

    exit_code = 4


class PortInUse(Conflict):
    """A host port is already taken; the message names the owner (pid/process or sandbox)."""

    def __init__(self, binding: str, owner: str) -> None:
        self.binding = binding
        self.owner = owner
        super().__init__(
            f"host port {binding} is already in use by {owner}; choose another host port or stop that owner"
        )


class KernelError(PortwrightError):
    """A kernel operation or system tool failed: names the command and the errno/stderr."""

    exit_code = 5

    def __init__(self, what: str, detail: str, errno: int | None = None) -> None:
        self.what = what
        self.detail = detail
        self.errno = errno
        super().__init__(f"{what} failed: {detail.strip()}")


class MissingTool(PortwrightError):
    """A required binary or kernel feature is absent; names the Debian package that brings it."""

    exit_code = 6

    def __init__(self, tool: str, package: str) -> None:
        self.tool = tool
        self.package = package
        super().__init__(f"{tool} is not available; install it with: apt-get install {package}")


class NeedRoot(PortwrightError):
    """The operation needs root (CAP_NET_ADMIN / CAP_SYS_ADMIN)."""

    exit_code = 7

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); run it with sudo")
