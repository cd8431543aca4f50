"""The test session's portwright state directories and the bpffs pins they leave behind.

Publish mode ``ebpf`` (the default where the kernel allows it) and ``host-remap`` pin maps and
links under ``/sys/fs/bpf/portwright/<hash of the state dir>/`` (``kernel.bpf.fs.pin_dir``), and
the CNI plugin does the same for ``STATE/cni``. ebpf's links sit at the machine's cgroup2 root and
outlive the state directory: a test that deletes a private state dir without removing its pins
leaves programs attached to every socket on the machine. So every state directory a test makes
comes from ``private_state_dir`` (or is ``register``-ed) and goes with ``discard``; the session
end asks ``leftovers`` for pins of registered dirs that are still there (a failure) and
``unattributed`` for new pin dirs nobody registered (reported, never removed: on a shared
machine they may be another user's, whose state dir still exists).

The bookkeeping here is pure (paths and hashes); only ``remove``/``discard`` touch bpffs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from portwright.kernel.bpf import fs

#: The CNI plugin's state lives beside ``portwright run``'s (``cni.kernel.cni_rewrite_state``).
CNI_SUBDIR = "cni"

#: pin dir -> the state dir it belongs to, for every state dir of this session.
_registered: dict[str, str] = {}
#: pin dir -> the test after which it was first seen (``note``, from an autouse fixture).
_first_seen: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Leftover:
    pin_dir: str
    state_dir: str | None  # None: nobody in this session registered it
    test: str | None = None  # the test after which it first appeared, when known

    def line(self) -> str:
        whose = (
            f"state dir {self.state_dir}" if self.state_dir else "a state dir this session did not register"
        )
        after = f", first seen after {self.test}" if self.test else ""
        return f"{self.pin_dir} ({whose}{after})"


def pin_dirs_of(state_dir: str) -> dict[str, str]:
    """The pin dirs a state dir may own: its own and its CNI plugin's (pin dir -> state dir)."""
    cni = os.path.join(state_dir, CNI_SUBDIR)
    return {fs.pin_dir(state_dir): state_dir, fs.pin_dir(cni): cni}


def register(state_dir: str) -> str:
    """Count ``state_dir`` as this session's (its pins may be removed, and must be by the end)."""
    _registered.update(pin_dirs_of(state_dir))
    return state_dir


def registered() -> dict[str, str]:
    return dict(_registered)


def note(before: Iterable[str], after: Iterable[str], test: str) -> None:
    """Remember ``test`` for the pin dirs that appeared while it ran (kept: the first test)."""
    for pin in set(after) - set(before):
        _first_seen.setdefault(pin, test)


def first_seen() -> dict[str, str]:
    return dict(_first_seen)


def private_state_dir(prefix: str, parent: str | None = None) -> str:
    """A fresh state directory (``tempfile.mkdtemp``), registered."""
    return register(tempfile.mkdtemp(prefix=prefix, dir=parent))


def remove(state_dir: str) -> None:
    """Remove the bpffs pins of ``state_dir`` and of its CNI plugin (links detach with them)."""
    for pin in pin_dirs_of(state_dir):
        fs.remove_pins(pin)


def discard(state_dir: str) -> None:
    """A private state dir is done: its pins first (they outlive it), then the directory."""
    remove(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)


def pin_dirs(parent: str = fs.PIN_PARENT) -> set[str]:
    """The pin dirs present now (empty without bpffs or without root)."""
    try:
        return {os.path.join(parent, n) for n in os.listdir(parent)}
    except OSError:
        return set()


def attribute(
    present: Iterable[str], known: dict[str, str], seen: dict[str, str] | None = None
) -> list[Leftover]:
    """Each pin dir in ``present`` with its registered state dir (None if unknown) and the test
    after which it appeared (``seen``, None if unknown), sorted."""
    seen = seen or {}
    return [Leftover(p, known.get(p), seen.get(p)) for p in sorted(present)]


def leftovers(
    present: Iterable[str], known: dict[str, str], seen: dict[str, str] | None = None
) -> list[Leftover]:
    """Pin dirs of registered state dirs still present: a test (or the product) leaked them."""
    return [lo for lo in attribute(present, known, seen) if lo.state_dir is not None]


def unattributed(
    present: Iterable[str], before: Iterable[str], known: dict[str, str], seen: dict[str, str] | None = None
) -> list[Leftover]:
    """Pin dirs that appeared during the session and belong to no registered state dir."""
    return [lo for lo in attribute(set(present) - set(before), known, seen) if lo.state_dir is None]


def report(title: str, items: list[Leftover]) -> str:
    """One message: a title line, then a line per pin dir."""
    return "\n".join([f"{title} ({len(items)}):", *(f"  {lo.line()}" for lo in items)])
