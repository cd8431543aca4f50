"""The supervisor: the one process that stays alive per sandbox. Process plumbing only.

It asks the engine to build the sandbox (``Engine.create``), then spawns CMD in the sandbox's
netns and cgroup, forwards signals, holds the publisher's sockets and relay, answers ``stats`` on
a unix control socket, and asks the engine to tear down once CMD is gone (``Engine.finish``).
``run`` in the foreground *is* the supervisor; ``run -d`` gets one forked from the shared fork
server (``zygote.py``), so that the interpreter's pages are shared between sandboxes.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
from contextlib import ExitStack

from .engine import Engine, Live
from .errors import BadInput, KernelError, PortwrightError
from .kernel import cgroup, netns
from .kernel.proc import set_process_name, set_process_title
from .spec import SandboxSpec
from .state import State, grace_path, read_grace

# How often a foreground supervisor re-checks Docker's DOCKER-USER hook, so that a dockerd started
# (or restarted) after the sandbox does not cut its traffic with a FORWARD DROP policy. Detached
# sandboxes leave this to the fork server: one check per host, not one per sandbox.
DOCKER_USER_RECHECK_SECONDS = 5.0
STOP_GRACE_SECONDS = 10.0  # as docker stop: SIGTERM, then SIGKILL after the grace period
FD_LIMIT_TARGET = 1 << 20  # root may raise the hard limit up to fs.nr_open
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def check_command(spec: SandboxSpec) -> None:
    """CMD must exist: on PATH, or (a relative path) relative to CMD's directory, which is the
    user's, not the supervisor's (/ for a detached run)."""
    exe = spec.cmd[0]
    found = (shutil.which(exe) if "/" not in exe
             else exe if os.access(os.path.join(spec.cwd, exe), os.X_OK) else None)
    if not found:
        raise BadInput(f"command {exe!r} not found or not executable; give a program on PATH or an absolute path")


def control_path(state_dir: str, sid: str) -> str:
    return os.path.join(state_dir, "ctl", f"{sid}.sock")


def unix_op(sock: socket.socket, path: str, op: str) -> None:
    """bind or connect a unix socket to ``path`` however long its directory is: sun_path holds
    only 107 bytes, so the directory is reached through /proc/self/fd/N, a short magic link."""
    directory, base = os.path.split(path)
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        getattr(sock, op)(f"/proc/self/fd/{fd}/{base}")
    finally:
        os.close(fd)


def query_stats(state: State, sid: str) -> dict[str, dict[str, int]]:
    """Ask a running supervisor for its per-mapping counters."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        unix_op(s, control_path(state.dir, sid), "connect")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return json.loads(data or b"{}")  # type: ignore[no-any-return]
    except OSError:
        return {}
    finally:
        s.close()


class Supervisor:
    """One sandbox's process: asks the engine to build it, then runs CMD and waits."""

    def __init__(self, spec: SandboxSpec, engine: Engine | None = None, watch_docker_user: bool = True) -> None:
        self.spec = spec
        self.engine = engine or Engine()
        self.state = self.engine.state
        self.live: Live | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self.stop_requested = threading.Event()
        self.ctl: socket.socket | None = None
        self.watch_docker_user = watch_docker_user

    @property
    def sandbox_id(self) -> str:
        assert self.live is not None
        return self.live.sandbox.id

    # -------------------------------------------------------------- setup
    def setup(self) -> str:
        """Create everything; on any error, roll back and re-raise. Returns the sandbox id."""
        check_command(self.spec)
        with ExitStack() as stack:
            self.live = self.engine.create(self.spec, stack, supervisor_pid=os.getpid())
            set_process_title(f"portwright _supervise {self.live.sandbox.name}")
            self._serve_control()
            stack.callback(self._close_control)
            self._start_child()
            assert self.child is not None
            self.engine.started(self.live, self.child.pid)
            if self.spec.bridged and self.watch_docker_user:
                self._watch_docker_user()
            stack.pop_all()
        return self.sandbox_id

    def _start_child(self) -> None:
        assert self.live is not None
        spec, sb = self.spec, self.live.sandbox
        out = open(self.live.log_path, "ab", buffering=0) if self.live.log_path else None
        join = cgroup.join_fn(self.live.cgroup)
        enter = netns.preexec_enter(sb.netns) if sb.netns else os.setsid

        def preexec() -> None:
            join()
            enter()

        env = {**os.environ, **dict(spec.env)}
        try:
            self.child = subprocess.Popen(
                spec.cmd, env=env, preexec_fn=preexec, cwd=spec.cwd if os.path.isdir(spec.cwd) else "/",
                stdin=subprocess.DEVNULL if spec.detach else None, stdout=out,
                stderr=subprocess.STDOUT if out else None, close_fds=True)
        except OSError as e:
            raise BadInput(f"cannot start {spec.cmd[0]!r}: {e.strerror}") from None
        finally:
            if out is not None:
                out.close()

    def _watch_docker_user(self) -> None:
        def loop() -> None:
            # Its own State handle: SQLite connections are not shared across threads here.
            engine = Engine(State(self.state.dir), firewall=self.engine.fw)
            while not self.stop_requested.wait(DOCKER_USER_RECHECK_SECONDS):
                engine.sync_docker_user()

        threading.Thread(target=loop, name="pw-docker-user", daemon=True).start()

    def _serve_control(self) -> None:
        path = control_path(self.state.dir, self.sandbox_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            unix_op(srv, path, "bind")
            srv.listen(8)
        except OSError as e:
            srv.close()
            raise KernelError(f"serving the control socket {path}", e.strerror or str(e)) from None
        self.ctl = srv
        publisher = self.live.publisher if self.live is not None else None

        def loop() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                with conn:
                    stats = publisher.stats() if publisher is not None else {}
                    try:
                        conn.sendall(json.dumps(stats).encode())
                    except OSError:
                        pass

        threading.Thread(target=loop, name="pw-control", daemon=True).start()

    def _close_control(self) -> None:
        if self.ctl is None:
            return
        self.ctl.close()
        self.ctl = None
        for path in (control_path(self.state.dir, self.sandbox_id), grace_path(self.state.dir, self.sandbox_id)):
            try:
                os.unlink(path)
            except OSError:
                pass

    # -------------------------------------------------------------- run
    def wait(self) -> int:
        """Wait for CMD (forwarding signals) and return its exit code (128+N for a signal)."""
        assert self.child is not None and self.live is not None
        child = self.child
        killer: list[threading.Timer] = []

        def kill_group() -> None:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        def forward(signum: int, _frame: object) -> None:
            if self.spec.detach or signum == signal.SIGTERM:
                self.stop_requested.set()
            try:
                os.killpg(child.pid, signum)
            except ProcessLookupError:
                pass
            if not killer:  # as docker stop: SIGKILL if CMD outlives the grace period
                t = threading.Timer(read_grace(self.state.dir, self.sandbox_id, STOP_GRACE_SECONDS), kill_group)
                t.daemon = True
                t.start()
                killer.append(t)

        for s in FORWARDED_SIGNALS:
            signal.signal(s, forward)
        # Blocks in waitpid without polling; a signal runs forward() and the wait resumes (PEP 475).
        rc = child.wait()
        for t in killer:
            t.cancel()
        # As Docker: when CMD exits, whatever it left behind (in its process group, or detached
        # with setsid but still in the sandbox's cgroup) goes too.
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        cgroup.kill(self.live.cgroup)
        return 128 - rc if rc < 0 else rc

    def teardown(self, exit_code: int | None) -> list[str]:
        self.stop_requested.set()
        self._close_control()
        return self.engine.finish(self.live, exit_code) if self.live is not None else []


def raise_fd_limit() -> None:
    """Two sockets per published port (v4 and v6) plus relayed connections: 10,000 ports need far
    more than the usual soft limit of 1,024 descriptors, so take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            target = min(int(f.read()), FD_LIMIT_TARGET)
    except OSError:
        target = hard
    for limit in (max(target, hard), hard):
        try:
            if soft < limit:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(limit, hard)))
            return
        except (ValueError, OSError):
            continue


def _report(ready_fd: int | None, line: str) -> None:
    if ready_fd is not None:
        try:
            os.write(ready_fd, (line + "\n").encode())
        except OSError:
            pass  # the CLI that asked is gone; the sandbox runs on regardless
        os.close(ready_fd)


def run(spec: SandboxSpec, ready_fd: int | None = None, watch_docker_user: bool = True) -> int:
    """The whole lifecycle. With ready_fd, report "ok ID" or "err CODE MESSAGE" through it."""
    set_process_name("portwright")
    raise_fd_limit()
    sup = Supervisor(spec, watch_docker_user=watch_docker_user)
    try:
        sid = sup.setup()
    except PortwrightError as e:
        if ready_fd is None:
            raise
        _report(ready_fd, f"err {e.exit_code} {e}")
        return e.exit_code
    except BaseException as e:
        _report(ready_fd, f"err 1 internal error: {type(e).__name__}: {e}")
        raise
    _report(ready_fd, f"ok {sid}")
    code: int | None = None
    try:
        code = sup.wait()
    finally:
        for problem in sup.teardown(code):
            print(f"portwright: teardown: {problem}", file=sys.stderr)
    return code
