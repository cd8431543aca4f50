"""``NAME.portwright`` on the host: a marked block in the hosts file, one block per state directory.

The block is rewritten whole by the resolver on every change (``render`` is pure: old text and
entries in, new text out; lines outside our block are kept byte for byte). ``write_atomic`` replaces
the file by rename, so a reader sees the old file or the new one, never half of one; where the file
is a mount point (a container's bind-mounted /etc/hosts) rename fails with EBUSY and it is rewritten
in place instead. A lock serialises writers of different state directories.

The hosts file is the machine's own, so only the default state directory (/run/portwright, the
installed portwright) keeps its block in /etc/hosts; another state directory (a test's, a private
experiment's) keeps none unless ``PORTWRIGHT_HOSTS_FILE`` names a file for it. That variable names
any file (tests use a temp file), and an empty value turns the feature off. ``sweep`` removes the
blocks of state directories whose resolver is gone (killed with -9, its directory deleted).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence

from ..model import IPAddress
from ..state import DEFAULT_DIR

DEFAULT_PATH = "/etc/hosts"
ENV = "PORTWRIGHT_HOSTS_FILE"
LOCK_DIRS = ("/run/lock", tempfile.gettempdir())


def hosts_path(state_dir: str) -> str | None:
    """The hosts file to keep ``state_dir``'s block in; None when it keeps none."""
    path = os.environ.get(ENV)
    if path is not None:
        return path or None  # PORTWRIGHT_HOSTS_FILE= : off
    return DEFAULT_PATH if os.path.abspath(state_dir) == DEFAULT_DIR else None


def markers(state_dir: str) -> tuple[str, str]:
    return (f"# BEGIN portwright {state_dir}", f"# END portwright {state_dir}")


def render(old: str, state_dir: str, entries: Sequence[tuple[str, IPAddress]]) -> str:
    """``old`` with this state directory's block replaced by ``entries`` (removed when empty)."""
    begin, end = markers(state_dir)
    kept: list[str] = []
    inside = False
    for line in old.splitlines(keepends=True):
        stripped = line.rstrip("\n")
        if stripped == begin:
            inside = True
        elif stripped == end and inside:
            inside = False
        elif not inside:
            kept.append(line)
    text = "".join(kept)
    if not entries:
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    body = "".join(f"{ip}\t{name}\n" for name, ip in entries)
    return f"{text}{begin}\n{body}{end}\n"


def owners(text: str) -> list[str]:
    """The state directories that have a block in ``text``."""
    return [
        ln[len("# BEGIN portwright ") :] for ln in text.splitlines() if ln.startswith("# BEGIN portwright ")
    ]


def sweep(path: str, alive: Callable[[str], bool]) -> list[str]:
    """Remove the blocks of state directories for which ``alive`` is false; their names."""
    try:
        with open(path) as f:
            dead = [d for d in owners(f.read()) if not alive(d)]
    except OSError:
        return []
    for d in dead:
        update(path, d, [])
    return dead


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    name = "portwright-hosts-" + path.strip("/").replace("/", "_") + ".lock"
    for d in LOCK_DIRS:
        try:
            fd = os.open(os.path.join(d, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            break
        except OSError:
            continue
    else:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update(path: str, state_dir: str, entries: Sequence[tuple[str, IPAddress]]) -> bool:
    """Put this state directory's block into ``path``; True when the file changed."""
    with _locked(path):
        try:
            with open(path) as f:
                old = f.read()
        except FileNotFoundError:
            old = ""
        new = render(old, state_dir, entries)
        if new == old:
            return False
        write_atomic(path, new)
        return True


def write_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=".portwright-hosts-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)  # no fsync: readers need the rename's atomicity, not durability (and an
            # fsync on a loaded disk would stall the resolver's one thread for seconds)
        os.chmod(tmp, mode)
        try:
            os.rename(tmp, path)
            return
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.EXDEV):
                raise
        with open(path, "w") as f:  # a bind-mounted file cannot be renamed over
            f.write(text)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
