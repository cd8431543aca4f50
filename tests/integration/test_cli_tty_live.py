"""``run -it`` and ``exec -it`` driven through a pseudo-terminal as a person drives them (issue
17): bash -i gets job control (Ctrl-Z stops a job, ``jobs`` lists it, ``fg`` brings it back),
sees the terminal's size and its changes (SIGWINCH), Ctrl-C reaches the job and not portwright,
and ``exit 7`` is portwright's exit code. ``-t`` without a terminal is refused in one line."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from collections.abc import Iterator

import pytest
from pwutil import pw, uniq

pytestmark = pytest.mark.integration
PROMPT = "PWTTY$ "


class Terminal:
    """portwright on the follower side of a new pseudo-terminal; the test types on the leader."""

    def __init__(self, *args: str, rows: int = 30, cols: int = 100) -> None:
        env = {**os.environ, "PS1": PROMPT, "TERM": "dumb"}
        pid, fd = pty.fork()
        if pid == 0:  # the child: becomes portwright, the session's first job
            try:
                os.execve(sys.executable, [sys.executable, "-m", "portwright", *args], env)
            finally:
                os._exit(127)
        self.pid, self.fd, self.seen = pid, fd, ""
        self.resize(rows, cols)

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, pattern: str, timeout: float = 20) -> str:
        """Read until ``pattern`` (a regex) shows in what arrived since the last match."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.seen)
            if m:
                got, self.seen = self.seen[: m.end()], self.seen[m.end() :]
                return got
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.seen[-600:]!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.seen += os.read(self.fd, 4096).decode(errors="replace").replace("\r", "")
                except OSError:  # EIO: the follower side is closed
                    assert re.search(pattern, self.seen), f"no {pattern!r} in {self.seen[-600:]!r}"

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:
                if select.select([self.fd], [], [], 0.1)[0]:
                    os.read(self.fd, 4096)
            except OSError:
                time.sleep(0.05)
        raise AssertionError("portwright did not exit")

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


def _session(term: Terminal) -> None:
    """What a person does at the shell: size, job control, a resize, Ctrl-C, then exit 7."""
    start = term.expect(re.escape(PROMPT))
    assert "no job control" not in start and "cannot set terminal process group" not in start, start
    term.type("stty size\n")
    term.expect(r"\n30 100\n")
    term.expect(re.escape(PROMPT))
    term.type("sleep 300\n")
    time.sleep(0.5)
    term.type("\x1a")  # Ctrl-Z
    term.expect(r"Stopped\s+sleep 300")
    term.type("jobs\n")
    term.expect(r"\[1\]\+\s+Stopped\s+sleep 300")
    term.type("fg\n")
    term.expect(r"sleep 300\n")
    time.sleep(0.3)
    term.type("\x03")  # Ctrl-C: the job dies, bash and portwright stay
    term.expect(re.escape(PROMPT))
    term.type("trap 'echo WINCH $(stty size)' WINCH\n")
    term.expect(re.escape(PROMPT))
    term.resize(40, 120)  # the kernel signals the terminal's foreground group: bash
    term.type("echo typed\n")
    term.expect(r"WINCH 40 120")
    term.expect(r"typed\n")
    term.type("exit 7\n")
    assert term.wait() == 7


def test_run_it_gives_bash_a_real_terminal() -> None:
    term = Terminal("run", "-it", "--network", "none", "--", "bash", "--norc", "--noprofile", "-i")
    try:
        _session(term)
    finally:
        term.close()


@pytest.fixture
def sandbox() -> Iterator[str]:
    name = uniq("tty")
    pw("run", "-d", "--name", name, "--network", "none", "--", "sleep", "600")
    try:
        yield name
    finally:
        pw("rm", "-f", name, check=False)


def test_exec_it_gives_bash_a_real_terminal(sandbox: str) -> None:
    term = Terminal("exec", "-it", sandbox, "--", "bash", "--norc", "--noprofile", "-i")
    try:
        _session(term)
    finally:
        term.close()


def test_t_needs_a_terminal(sandbox: str) -> None:
    for args in (("run", "-t", "--network", "none", "--", "true"), ("exec", "-it", sandbox, "--", "true")):
        r = pw(*args, check=False)
        assert r.returncode == 2 and "not a TTY" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = pw("run", "-dt", "--network", "none", "--", "true", check=False)
    assert r.returncode == 2 and "no attach" in r.stderr
