"""The fork server: one warm process that forks a supervisor for every detached sandbox.

A Python supervisor started afresh costs its whole interpreter (about 13 MB PSS each, measured).
Forked from one warm parent that has already imported everything a supervisor runs, its pages are
shared copy-on-write with the parent and with every sibling, so each sandbox pays only for what
it writes. ``gc.freeze()`` before each fork keeps the collector from touching (and so copying) the
shared objects.

The server listens on ``STATE/ctl/zygote.sock``. ``spawn`` (the CLI's ``run -d``) connects (starting
the server if none runs or is starting: ``zygotestart``, whose lock the server holds), sends a token
naming the code on disk on the first line and the request as JSON after it (the spec and the
caller's environment), and reads back the supervisor's one line: ``ok ID`` or ``err CODE MESSAGE``.
The server forks at once and does nothing else: the child checks the token and hands the unread
request to the supervisor (``supervisor.hold_detached``). A server whose token differs (portwright
was upgraded under it) answers ``stale`` and exits; ``spawn`` starts a new one. The server is
single-threaded (it must be: it forks), reaps its children, re-checks Docker's DOCKER-USER hook for
all of them, and exits after ``IDLE_SECONDS`` with no child left. Killing it harms no sandbox:
supervisors are already their own sessions.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import select
import signal
import socket
import sqlite3
import sys
import time
from typing import Any

from .engine import Engine
from .errors import KernelError, PortwrightError
from .kernel.proc import set_process_name, set_process_title
from .kernel.unixpath import unix_op
from .recovery import SETTLE_SECONDS, FirewallWatch
from .spec import SandboxSpec
from .state import State
from .supervisor import DOCKER_USER_RECHECK_SECONDS, hold_detached
from .zygotestart import hold_lock, pid_path, socket_path, start_unless_running, try_connect

NAME = "pw-zygote"
IDLE_SECONDS = 30.0  # a server with no sandbox left exits after this long
START_TIMEOUT = 15.0  # seconds a new server may take to answer
REQUEST_LIMIT = 4 << 20  # bytes: a request is a spec and an environment


def code_token() -> str:
    """Names the code on disk: the size and mtime of every module of the package."""
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                st = os.stat(os.path.join(dirpath, f))
                h.update(f"{dirpath}/{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# Client side (the CLI)
# ------------------------------------------------------------------------------------------------


def spawn(spec: SandboxSpec, state_dir: str | None = None) -> str:
    """Start a detached sandbox through the fork server; return its id or raise its error."""
    state_dir = state_dir or State().dir
    request = (
        code_token().encode()
        + b"\n"
        + json.dumps({"spec": spec.to_json(), "env": dict(os.environ), "state_dir": state_dir}).encode()
    )
    for _ in range(3):
        conn = _connect(state_dir)
        try:
            conn.sendall(request + b"\n")
            conn.shutdown(socket.SHUT_WR)
            reply = _read_all(conn).decode().strip()
        finally:
            conn.close()
        if reply == "stale":
            _wait_gone(state_dir)
            continue
        return _parse_reply(reply, state_dir)
    raise PortwrightError(
        f"the fork server under {state_dir} keeps answering 'stale'; "
        f"kill it (see {pid_path(state_dir)}) and retry"
    )


def _parse_reply(reply: str, state_dir: str) -> str:
    if reply.startswith("ok "):
        return reply[3:]
    if reply.startswith("err "):
        _, code, text = reply.split(" ", 2)
        err = PortwrightError(text)
        err.exit_code = int(code)
        raise err
    raise PortwrightError(
        "the sandbox's supervisor exited before it was ready; see "
        f"{os.path.join(state_dir, 'logs', 'supervisors.log')}"
    )


def _read_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def _connect(state_dir: str) -> socket.socket:
    """A connection to the server, starting one if none runs or is starting (``zygotestart``):
    while another process's server is starting, wait for it rather than start a second."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        s = try_connect(state_dir)
        if s is not None:
            return s
        start_unless_running(state_dir)
        if time.monotonic() > deadline:
            raise KernelError(
                "starting the fork server",
                f"no answer on {socket_path(state_dir)} after "
                f"{START_TIMEOUT:.0f}s; see {os.path.join(state_dir, 'logs', 'supervisors.log')}",
            )
        time.sleep(0.01)


def _wait_gone(state_dir: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and os.path.exists(socket_path(state_dir)):
        time.sleep(0.01)


def stop_server(state_dir: str) -> None:
    """Stop the fork server of this state directory, if one runs (tests, uninstall)."""
    try:
        with open(pid_path(state_dir)) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass


# ------------------------------------------------------------------------------------------------
# Server side
# ------------------------------------------------------------------------------------------------


class Server:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.token = code_token()
        self.children: set[int] = set()
        self.reapers: set[int] = set()  # children that tear a sandbox down, not supervisors
        self.idle_since = time.monotonic()
        self.next_docker_check = 0.0
        self.restorer: int | None = None  # the child putting back what a firewall reload took
        self.watch: FirewallWatch | None = None
        self.lock: int | None = None  # zygotestart's lock, held for the server's whole life
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        path = socket_path(state_dir)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Only one server per state directory: a live one answers, a dead one's socket is stale.
        probe = try_connect(state_dir)
        if probe is not None:
            probe.close()
            raise SystemExit(0)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        unix_op(self.sock, path, "bind")
        self.sock.listen(64)
        with open(pid_path(state_dir), "w") as f:
            f.write(str(os.getpid()))

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._quit())
        # A child's exit wakes the loop at once (its sandbox is torn down without delay).
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.watch = watch = FirewallWatch()
        while True:
            self._reap()
            now = time.monotonic()
            if not self.children and now - self.idle_since > IDLE_SECONDS:
                self._quit()
            if self.children and now >= self.next_docker_check:
                self._sync_docker_user()
                self.next_docker_check = now + DOCKER_USER_RECHECK_SECONDS
            if watch.take(now):
                self._restore()
            timeout = min(1.0, max(0.0, watch.due - time.monotonic()))
            watched: list[Any] = [self.sock.fileno(), wake_r, *watch.fds()]
            ready, _, _ = select.select(watched, [], [], timeout)
            watch.ready(ready)
            if wake_r in ready:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            if self.sock.fileno() in ready:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    continue
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        """Fork at once; the child reads the request. The server itself runs as little code as
        possible between forks: every page it writes stops being shared with the children."""
        gc.freeze()  # what the children share stays untouched by their collectors
        pid = os.fork()
        if pid == 0:
            self._child(conn)  # never returns
        conn.close()
        self.children.add(pid)

    def _child(self, conn: socket.socket) -> None:
        code = 1
        try:
            self._close_in_child()
            os.setsid()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server's handler is not ours
            conn.settimeout(10)
            token, _, request = _read_limited(conn).partition(b"\n")
            conn.settimeout(None)
            if token.decode(errors="replace") != self.token:
                conn.sendall(b"stale\n")
                os.kill(os.getppid(), signal.SIGTERM)  # the server runs old code: it goes
                return
            # The reply goes out on this connection; detach() leaves one copy of its descriptor,
            # which the builder answers on and closes, so the CLI's read ends right then.
            code = hold_detached(request, conn.detach())
        except BaseException as e:  # the reply line has gone out if setup got that far
            print(f"portwright: supervisor: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            os._exit(code & 0xFF)

    def _reap(self) -> None:
        """Collect exited children. A supervisor that was tini cannot tear its sandbox down
        itself: a short-lived child of this server does it (the server's own pages stay clean)."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                break
            if pid == 0:
                break
            self.children.discard(pid)
            if pid == self.restorer:
                self.restorer = None
            if pid in self.reapers:
                self.reapers.discard(pid)
            else:
                code = os.waitstatus_to_exitcode(status)
                code = 128 - code if code < 0 else code
                self._record_exit(pid, code)
                self._tear_down_after(pid, code)
            if not self.children:
                self.idle_since = time.monotonic()

    def _record_exit(self, pid: int, code: int) -> None:
        """First the exit code, which only this process knows; the teardown follows. The database
        is opened for this and closed at once: no connection may live across a fork."""
        try:
            state = State(self.state_dir)
            try:
                with state.tx():
                    state.record_exit(pid, code)
            finally:
                state.close()
        except (PortwrightError, OSError, sqlite3.Error):
            pass

    def _tear_down_after(self, pid: int, code: int) -> None:
        reaper = os.fork()
        if reaper == 0:
            rc = 1
            try:
                self._close_in_child()
                Engine(State(self.state_dir)).reap(pid, code)
                rc = 0
            except BaseException as e:
                print(f"portwright: reaping supervisor {pid}: {type(e).__name__}: {e}", file=sys.stderr)
            finally:
                os._exit(rc)
        self.children.add(reaper)
        self.reapers.add(reaper)

    def _close_in_child(self) -> None:
        """A child keeps neither the listening socket nor the event subscription (whose unread
        events would pile up in it), nor the server's lock (a sandbox that outlives the server
        must not make it look alive)."""
        self.sock.close()
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None
        if self.watch is not None:
            self.watch.close()

    def _restore(self) -> None:
        """Put back every network's rules and every running sandbox's NAT elements that a
        firewall reload took (issue 13), in a short-lived child: the server's pages stay clean
        and a hung nft cannot stall it. One at a time; a change meanwhile is looked at after."""
        if not self.children - self.reapers:
            # No sandbox of ours runs: nothing to hold up. Networks are put back by the next
            # command, and a restorer child here would keep this idle server alive forever on a
            # host where something else keeps changing the ruleset.
            return
        if self.restorer is not None:
            if self.watch is not None:
                self.watch.due = time.monotonic() + SETTLE_SECONDS
            return
        pid = os.fork()
        if pid == 0:
            rc = 1
            try:
                self._close_in_child()
                for line in Engine(State(self.state_dir)).restore():
                    print(f"portwright: {line}", file=sys.stderr)
                rc = 0
            except BaseException as e:
                print(f"portwright: restoring the firewall: {type(e).__name__}: {e}", file=sys.stderr)
            finally:
                os._exit(rc)
        self.children.add(pid)
        self.reapers.add(pid)
        self.restorer = pid

    def _sync_docker_user(self) -> None:
        try:
            Engine(State(self.state_dir)).sync_docker_user()
        except (PortwrightError, OSError):
            pass

    def _quit(self) -> None:
        for path in (socket_path(self.state_dir), pid_path(self.state_dir)):
            try:
                os.unlink(path)
            except OSError:
                pass
        os._exit(0)


def _read_limited(conn: socket.socket) -> bytes:
    data = b""
    while len(data) < REQUEST_LIMIT:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def warm_up() -> None:
    """Import what a supervisor may run, so children share it instead of each importing it."""
    from .firewall import backend, nft, rules  # noqa: F401
    from .proxy import server, tcp, udp  # noqa: F401
    from .publish import host, nat, proxy  # noqa: F401


def main(argv: list[str]) -> int:
    state_dir = argv[0] if argv else State().dir
    set_process_name(NAME)
    set_process_title(f"{NAME} {state_dir}")
    lock = hold_lock(state_dir)
    if lock is None:
        return 0  # another server runs, or is starting, for this state directory
    warm_up()
    gc.collect()
    try:
        srv = Server(state_dir)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return 0
        raise
    srv.lock = lock
    srv.serve()
    return 0
