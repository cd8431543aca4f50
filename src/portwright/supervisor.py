"""The supervisor: the one process that stays alive per sandbox. Process plumbing only.

It holds the publisher's sockets and userland relay, starts CMD in the sandbox's netns and cgroup
(``kernel.spawn``), forwards signals, answers ``stats`` on a unix control socket, and asks the
engine to tear down once CMD is gone. It waits in one thread: a ``select`` over CMD's pidfd, the
control socket and a signal wake-up pipe, with the grace timer and the DOCKER-USER re-check as
deadlines of the same loop.

``run`` in the foreground *is* the supervisor and builds the sandbox itself. A detached sandbox's
supervisor is forked from the fork server (``zygote.py``) and keeps its memory shared with it: the
building (state, nftables, ``ip``) happens in a short-lived child of the supervisor, the *builder*,
which hands the supervisor the sockets (SCM_RIGHTS) and what it needs to know, waits for CMD's
pid, records it and answers the CLI. Everything the build touched leaves with the builder.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import select
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from .caps_model import Privileges
from .engine import Engine, Live
from .errors import BadInput, KernelError, PortwrightError
from .firewall import rules
from .firewall.backend import default_firewall
from .kernel import caps, cgroup, netns, proc, spawn, tty
from .kernel.proc import set_child_subreaper, set_parent_death_signal, set_process_name, set_process_title
from .kernel.unixpath import unix_op
from .model import Mapping, address_text
from .owners import sandbox_owner
from .publish import registry
from .publish.base import Publisher
from .publish.nat import held_bindings, known_if_held
from .recovery import FirewallWatch
from .spec import SandboxSpec
from .state import State, grace_path, read_grace, state_dir

# How often a foreground supervisor re-checks Docker's DOCKER-USER hook, so that a dockerd started
# (or restarted) after the sandbox does not cut its traffic with a FORWARD DROP policy. Detached
# sandboxes leave this to the fork server: one check per host, not one per sandbox.
DOCKER_USER_RECHECK_SECONDS = 5.0
STOP_GRACE_SECONDS = 10.0  # as docker stop: SIGTERM, then SIGKILL after the grace period
FD_LIMIT_TARGET = 1 << 20  # root may raise the hard limit up to fs.nr_open
FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
#: Bytes of the builder's message (mappings as JSON: 10,000 ports in both families take ~2.5 MB).
HANDOFF_LIMIT = 16 << 20
MAX_FDS_PER_MESSAGE = 250  # SCM_RIGHTS carries at most 253 descriptors per message


def check_command(spec: SandboxSpec) -> None:
    """CMD must exist: on PATH, or (a relative path) relative to CMD's directory, which is the
    user's, not the supervisor's (/ for a detached run)."""
    exe = spec.cmd[0]
    found = (
        shutil.which(exe)
        if "/" not in exe
        else exe
        if os.access(os.path.join(spec.cwd, exe), os.X_OK)
        else None
    )
    if not found:
        raise BadInput(
            f"command {exe!r} not found or not executable; give a program on PATH or an absolute path"
        )


def control_path(state_dir: str, sid: str) -> str:
    return os.path.join(state_dir, "ctl", f"{sid}.sock")


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


def serve_control(state_dir: str, sid: str) -> socket.socket:
    path = control_path(state_dir, sid)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        unix_op(srv, path, "bind")
        srv.listen(8)
    except OSError as e:
        srv.close()
        raise KernelError(f"serving the control socket {path}", e.strerror or str(e)) from None
    return srv


def close_control(srv: socket.socket | None, state_dir: str, sid: str) -> None:
    if srv is not None:
        srv.close()
    for path in (control_path(state_dir, sid), grace_path(state_dir, sid)):
        try:
            os.unlink(path)
        except OSError:
            pass


@dataclass(slots=True)
class Held:
    """What the long-lived process holds for one sandbox while CMD runs."""

    sid: str
    spec: SandboxSpec | None  # None in a detached supervisor that has no relay to configure
    state_dir: str
    cgroup: str | None
    publisher: Publisher | None
    name: str = ""
    ctl: socket.socket | None = None
    pid: int | None = None
    sockets: list[socket.socket] = field(default_factory=list)  # reservations kept open while CMD runs


def start_cmd(held: Held, netns_path: str | None, log_path: str | None) -> int:
    spec = held.spec
    assert spec is not None
    return spawn.spawn(
        spec.cmd,
        env={**os.environ, **dict(spec.env)},
        cwd=spec.cwd,
        netns_path=netns_path,
        cgroup_path=held.cgroup,
        log_path=log_path,
        # As Docker: stdin only with -i (or -t, which hands CMD the terminal itself).
        stdin_null=spec.detach or not (spec.extra.get("interactive") or spec.extra.get("tty")),
        tty=bool(spec.extra.get("tty")),  # run -t: CMD is this terminal's foreground job
        child_setup=caps.child_setup(spec.privileges, netns_path),
    )


def _readable(watched: list[Any], timeout: float | None) -> list[Any]:
    """What select.select would return as readable, through poll(2): a proxy-mode holder of
    thousands of sockets has descriptors above select's FD_SETSIZE of 1,024 ("filedescriptor
    out of range in select()")."""
    p = select.poll()
    by_fd: dict[int, Any] = {}
    for w in watched:
        fd = w if isinstance(w, int) else w.fileno()
        by_fd[fd] = w
        p.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    return [by_fd[fd] for fd, _ev in p.poll(ms)]


def wait_cmd(held: Held, docker_user: Engine | None) -> int:
    """Wait for CMD, forwarding signals, serving stats; returns its exit code (128+N for signal N)."""
    assert held.pid is not None
    pid = held.pid
    pidfd = os.pidfd_open(pid)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    pending: list[int] = []
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for s in FORWARDED_SIGNALS:
        signal.signal(s, lambda signum, _frame: pending.append(signum))
    kill_at = next_docker = float("inf")
    # A firewall reload takes our rules: put this sandbox's back (issue 13). Detached sandboxes
    # leave it to the fork server, as the DOCKER-USER check.
    fw_watch = FirewallWatch() if docker_user is not None else None
    if docker_user is not None:
        next_docker = time.monotonic() + DOCKER_USER_RECHECK_SECONDS
    watched: list[Any] = [pidfd, wake_r] + ([held.ctl] if held.ctl is not None else [])
    watched += fw_watch.fds() if fw_watch is not None else []
    try:
        while True:
            due = fw_watch.due if fw_watch is not None else float("inf")
            timeout = max(0.0, min(kill_at, next_docker, due) - time.monotonic())
            ready = _readable(watched, None if timeout == float("inf") else timeout)
            if pidfd in ready:
                return spawn.exit_code(os.waitpid(pid, 0)[1])
            if wake_r in ready:
                _drain(wake_r)
                while pending:
                    _killpg(pid, pending.pop(0))
                    if kill_at == float("inf"):  # as docker stop: SIGKILL after the grace period
                        kill_at = time.monotonic() + read_grace(held.state_dir, held.sid, STOP_GRACE_SECONDS)
            if held.ctl is not None and held.ctl in ready:
                _answer_stats(held)
            now = time.monotonic()
            if now >= kill_at:
                _killpg(pid, signal.SIGKILL)
                kill_at = float("inf")
            if docker_user is not None and now >= next_docker:
                docker_user.sync_docker_user()
                next_docker = now + DOCKER_USER_RECHECK_SECONDS
            if fw_watch is not None and docker_user is not None:
                fw_watch.ready(ready)
                if fw_watch.take():
                    for line in docker_user.restore({held.sid}):
                        print(f"portwright: {line}", file=sys.stderr)
    finally:
        if fw_watch is not None:
            fw_watch.close()
        signal.set_wakeup_fd(-1)
        for fd in (pidfd, wake_r, wake_w):
            os.close(fd)
        # As Docker: when CMD exits, whatever it left behind (in its process group, or detached
        # with setsid but still in the sandbox's cgroup) goes too.
        _killpg(pid, signal.SIGKILL)
        cgroup.kill(held.cgroup)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _killpg(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _answer_stats(held: Held) -> None:
    assert held.ctl is not None
    try:
        conn, _ = held.ctl.accept()
    except OSError:
        return
    with conn:
        conn.settimeout(2)
        stats = held.publisher.stats() if held.publisher is not None else {}
        try:
            conn.sendall(json.dumps(stats).encode())
        except OSError:
            pass


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


# ------------------------------------------------------------------------------------------------
# The foreground supervisor: one process builds, holds and tears down
# ------------------------------------------------------------------------------------------------


class Supervisor:
    """One sandbox, built and held by this process (``run`` in the foreground, and tests)."""

    def __init__(self, spec: SandboxSpec, engine: Engine | None = None) -> None:
        self.spec = spec
        self.engine = engine or Engine()
        self.live: Live | None = None
        self.held: Held | None = None

    def setup(self) -> str:
        """Create everything; on any error, roll back and re-raise. Returns the sandbox id."""
        check_command(self.spec)
        with ExitStack() as stack:
            live = self.live = self.engine.create(self.spec, stack, supervisor_pid=os.getpid())
            held = self.held = Held(
                live.sandbox.id,
                self.spec,
                self.engine.state.dir,
                live.cgroup,
                live.publisher,
                name=live.sandbox.name,
            )
            held.ctl = serve_control(held.state_dir, held.sid)
            stack.callback(close_control, held.ctl, held.state_dir, held.sid)
            held.pid = start_cmd(held, live.sandbox.netns, live.log_path)
            stack.callback(_killpg, held.pid, signal.SIGKILL)
            self.engine.started(live, held.pid)
            stack.pop_all()
        return live.sandbox.id

    def wait(self) -> int:
        assert self.held is not None
        return wait_cmd(self.held, self.engine if self.spec.bridged else None)

    def teardown(self, exit_code: int | None) -> list[str]:
        if self.held is not None:
            close_control(self.held.ctl, self.held.state_dir, self.held.sid)
            self.held.ctl = None
        return self.engine.finish(self.live, exit_code) if self.live is not None else []


def run(spec: SandboxSpec) -> int:
    """The whole lifecycle in this process (``run`` in the foreground)."""
    set_process_name("portwright")
    raise_fd_limit()
    sup = Supervisor(spec)
    sup.setup()
    assert sup.live is not None
    # Named here, where this process is ours: Supervisor is also used in-process (by tests), and a
    # library call that renames its caller makes `who` take that caller for portwright.
    set_process_title(f"portwright _supervise {sup.live.sandbox.name}")
    code: int | None = None
    try:
        with tty.foreground_back() if spec.extra.get("tty") else contextlib.nullcontext():
            code = sup.wait()  # run -t: the terminal's foreground comes back to us after CMD
    finally:
        for problem in sup.teardown(code):
            print(f"portwright: teardown: {problem}", file=sys.stderr)
    return code


# ------------------------------------------------------------------------------------------------
# The detached supervisor (forked from the fork server) and its builder
# ------------------------------------------------------------------------------------------------


def hold_detached(request: bytes, reply_fd: int) -> int:
    """The supervisor of a detached sandbox, forked from the fork server with the CLI's request
    (JSON: the spec and the environment) still unread. Its child, the builder, parses it, builds
    the sandbox and answers the CLI on ``reply_fd``; this process runs as little Python as it can
    (every page it writes stops being shared with the fork server and the other sandboxes).

    Two ways to hold a sandbox. Without a userland relay to run, this process becomes ``tini``
    (exec, through a link named ``portwright``): a 30 KB init that starts CMD, forwards signals to
    its process group, reaps, and exits with CMD's code, holding the reservation sockets it
    inherited; the fork server, its parent, then tears the sandbox down. With a relay (proxy mode,
    or nat's ``[::1]`` relay), it stays Python: the builder starts CMD, this process becomes CMD's
    parent (as subreaper) once the builder exits, relays, waits and tears down itself."""
    set_process_name("portwright")
    set_child_subreaper()
    raise_fd_limit()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    builder = os.fork()
    if builder == 0:
        mine.close()
        code = 1
        try:
            code = _build(request, theirs, reply_fd, holder=os.getppid())
        finally:
            os._exit(code)
    theirs.close()
    os.close(reply_fd)
    try:
        msg, fds = _recv(mine)
        if "exec" in msg:
            plan = msg["exec"]
            hold = _hold_sockets(plan["hold"], plan["argv"][0], fds) if fds else None
            # The log collector (and the gcc that builds it, the first time) are our children
            # too: start it before answering, and name every child we have, so that the builder
            # takes none of them for CMD, which tini starts after the exec.
            logs = spawn.log_fds(plan["log"]) if plan["log"] else None
            _send(mine, {"ok": True, "hold": hold, "children": proc.children(os.getpid()) or []})
            mine.close()
            _become_tini(plan, logs)  # never returns
        gc.disable()  # 10,000 relays' objects, alive as long as this process: walked for nothing
        held, relays = _receive(msg, fds)
        _send(mine, {"ok": True})
    except (OSError, ValueError, KeyError, PortwrightError) as e:
        _send_quietly(mine, {"error": str(e)})
        mine.close()
        os.waitpid(builder, 0)  # it rolled back (CMD included) and told the CLI why
        return 1
    if held.publisher is not None:
        # Served once the builder has its answer, while it records CMD: adopting 10,000
        # listeners takes a third of a second, and a connection that comes meanwhile waits in
        # its listener's backlog (#11). A failure here ends this process, and the fork server's
        # reaper tears the sandbox down: no relay is left half-alive.
        held.publisher.serve(relays())
    gc.freeze()  # what serving needs lives as long as we do: later collections skip it
    gc.enable()
    verdict = _recv(mine)[0]
    mine.close()
    os.waitpid(builder, 0)  # CMD is our child from here on
    if "ok" not in verdict:
        return 1
    set_process_title(f"portwright _supervise {held.name}")
    code = wait_cmd(held, None)
    return _finish_detached(held, code)


def _become_tini(plan: dict[str, Any], logs: tuple[int, int] | None) -> None:
    """Exec the tiny init in the sandbox's cgroup and netns. ``logs``: CMD's stdout and stderr
    (the collector's pipes, started outside the cgroup, or the plain files)."""
    try:
        cgroup.join_fn(plan["cgroup"])()
        if plan["netns"]:
            netns.setns(plan["netns"])
            netns.bind_etc(plan["netns"])  # its resolv.conf, as 'ip netns exec' mounts it
        os.chdir(plan["cwd"] if os.path.isdir(plan["cwd"]) else "/")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        if logs is not None:
            os.dup2(logs[0], 1)
            os.dup2(logs[1], 2)
        caps.child_setup(Privileges.from_json(plan.get("privileges")), plan["netns"])()
        os.execve(plan["tini"], plan["argv"], plan["env"])
    finally:
        os._exit(127)


def _hold_sockets(link: str, title: str, fds: list[int]) -> int:
    """The reservation sockets must not reach CMD (tini passes every descriptor on), so a second
    tiny process, ``sleep infinity`` exec'd through a link also named ``portwright``, holds them
    and dies with tini (PDEATHSIG). Returns its pid."""
    holder = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            set_parent_death_signal(signal.SIGKILL)
            if os.getppid() != holder:
                os._exit(0)  # the sandbox's supervisor is already gone
            null = os.open(os.devnull, os.O_RDWR)
            for std in (0, 1, 2):
                os.dup2(null, std)
            keep = sorted(fds)
            low = 3
            for fd in keep:
                os.closerange(low, fd)
                os.set_inheritable(fd, True)
                low = fd + 1
            os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            os.execv(link, [title, "infinity"])
        finally:
            os._exit(127)
    for fd in fds:
        os.close(fd)
    return pid


def tiny_links(state_dir: str) -> tuple[str, str] | None:
    """``STATE/bin/{init,hold}/portwright`` -> tini and sleep: exec'd through these links, the
    supervisor and the socket holder keep the name (comm, what ``ss -p`` and ``ps`` show)
    "portwright". None where tini is not installed (the supervisor then stays Python)."""
    tini = shutil.which("tini")
    sleep = shutil.which("sleep")
    if tini is None or sleep is None:
        return None
    links = []
    for kind, target in (("init", tini), ("hold", sleep)):
        link = os.path.join(state_dir, "bin", kind, "portwright")
        if os.path.realpath(link) != os.path.realpath(target):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            tmp = f"{link}.{os.getpid()}"
            os.symlink(target, tmp)
            os.replace(tmp, link)
        links.append(link)
    return links[0], links[1]


def _build(request: bytes, chan: socket.socket, reply_fd: int, holder: int) -> int:
    """In the builder: create the sandbox for ``holder``, hand it over, record CMD, answer the CLI."""
    # A short-lived process (it exits once it has answered) that makes a few hundred thousand
    # objects at 10,000 ports, all alive until it exits: the cyclic collector would only walk
    # them again and again, a third of its time (#11). Nothing it makes needs collecting.
    gc.disable()
    try:
        req = json.loads(request)
        os.environ.clear()  # CMD gets the environment of the CLI that asked, as a foreground run
        os.environ.update(req.get("env") or {})
        os.environ["PORTWRIGHT_STATE_DIR"] = req["state_dir"]
        spec = SandboxSpec.from_json(req["spec"])
        engine = Engine()
        with ExitStack() as stack:
            check_command(spec)
            live = engine.create(spec, stack, supervisor_pid=holder, serve=False)
            relays = live.publisher.relays() if live.publisher is not None else {}
            links = None if relays else tiny_links(engine.state.dir)
            if links is not None:
                pid = _hand_to_tini(live, spec, links, chan, holder)
            else:
                pid = _hand_to_python(live, spec, req, relays, chan, stack)
            engine.started(live, pid)
            stack.pop_all()
    except PortwrightError as e:
        _send_quietly(chan, {"failed": True})
        _report(reply_fd, f"err {e.exit_code} {e}")
        return e.exit_code
    except BaseException as e:
        _send_quietly(chan, {"failed": True})
        _report(reply_fd, f"err 1 internal error: {type(e).__name__}: {e}")
        raise
    _send_quietly(chan, {"ok": True})
    _report(reply_fd, f"ok {live.sandbox.id}")
    return 0


def _hand_to_tini(
    live: Live, spec: SandboxSpec, links: tuple[str, str], chan: socket.socket, holder: int
) -> int | None:
    """The holder execs tini with CMD; returns CMD's pid once tini has started it (None if CMD
    was already gone by then)."""
    sb = live.sandbox
    argv = [f"portwright:{sb.name}", "-s", "-g", "--", *spec.cmd]
    env = {**os.environ, **dict(spec.env)}
    plan = {
        "tini": links[0],
        "hold": links[1],
        "argv": argv,
        "env": env,
        "cwd": spec.cwd,
        "netns": sb.netns,
        "cgroup": live.cgroup,
        "log": live.log_path,
        "privileges": spec.privileges.to_json(),
    }
    _send(chan, {"exec": plan}, [s.fileno() for s in live.sockets])
    answer = _recv(chan)[0]
    if "ok" not in answer:
        raise PortwrightError(str(answer.get("error", "the supervisor could not take the sandbox")))
    exclude = {os.getpid(), answer.get("hold") or 0, *answer.get("children", ())}
    return _child_of(holder, exclude=exclude)


#: Our own helpers that can become the holder's children after it answered (it is a subreaper:
#: a daemon's intermediate process may exit late); never CMD.
HELPER_COMMS = ("pw-dns", "portwright-logs")


def _child_of(pid: int, exclude: set[int], timeout: float = 5.0) -> int | None:
    """The first child of ``pid`` other than ``exclude`` (tini's CMD), waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = proc.children(pid)
        if found is None:
            return None  # tini is gone: CMD came and went
        kids = [k for k in found if k not in exclude and proc.comm(k) not in HELPER_COMMS]
        if kids:
            return kids[0]
        time.sleep(0.005)
    return None


def _hand_to_python(
    live: Live,
    spec: SandboxSpec,
    req: dict[str, Any],
    relays: dict[Mapping, socket.socket],
    chan: socket.socket,
    stack: ExitStack,
) -> int:
    """The builder starts CMD and hands the sockets, relays and control socket to the holder."""
    held = Held(live.sandbox.id, spec, state_dir(), live.cgroup, None, name=live.sandbox.name)
    ctl = serve_control(held.state_dir, held.sid)
    stack.callback(close_control, ctl, held.state_dir, held.sid)
    pid = start_cmd(held, live.sandbox.netns, live.log_path)
    stack.callback(_killpg, pid, signal.SIGKILL)
    order = list(relays)
    # A dual-stack socket serves two mappings (proxy mode's IPv4 twin): each socket is sent once,
    # so 10,000 ports cost the holder 10,000 descriptors, not 20,000 (issue 13.4).
    socks = list({id(s): s for s in relays.values()}.values())
    at = {id(s): i for i, s in enumerate(socks)}
    fds = [ctl.fileno()] + [s.fileno() for s in socks]
    fds += [s.fileno() for s in live.sockets if id(s) not in at]  # a set: 10,000 x 10,000 was seconds
    _send(
        chan,
        {
            "sid": held.sid,
            "name": held.name,
            "cgroup": live.cgroup,
            "pid": pid,
            # Rows, not objects: 10,000 relays are read back by the holder (Mapping.from_row).
            "relays": [
                [
                    m.proto,
                    address_text(m.host_ip),
                    m.host_port,
                    address_text(m.container_ip),
                    m.container_port,
                ]
                for m in order
            ],
            "relay_fd": [at[id(relays[m])] for m in order],
            "spec": req["spec"] if order else None,
        },
        fds,
    )
    answer = _recv(chan)[0]
    if "ok" not in answer:
        raise PortwrightError(str(answer.get("error", "the supervisor could not take the sandbox")))
    return pid


def _send_quietly(chan: socket.socket, msg: dict[str, Any]) -> None:
    try:
        _send(chan, msg)
    except OSError:
        pass


def _receive(msg: dict[str, Any], fds: list[int]) -> tuple[Held, Callable[[], dict[Mapping, socket.socket]]]:
    """In the Python holder: take the builder's sockets, and make the publisher that serves the
    userland relays (the spec is read only then). The relays themselves are made into objects
    only when the returned function is called, after the builder has its answer: 10,000 of
    them (a socket object and a mapping each) are a tenth of a second of ``run -d`` (#11)."""
    ctl, rest = socket.socket(fileno=fds[0]), fds[1:]
    rows: list[list[Any]] = msg["relays"]
    index: list[int] = msg.get("relay_fd") or list(range(len(rows)))  # a dual-stack socket serves two
    unique = max(index) + 1 if index else 0  # the relays' sockets come first, each once
    publisher = None
    spec = SandboxSpec.from_json(msg["spec"]) if msg.get("spec") else None
    mode = registry.mode_for(spec) if spec is not None else None
    if rows and spec is not None and mode is not None:
        ctx = registry.PublishContext(spec, sandbox_owner(msg["sid"]), default_firewall())
        publisher = registry.create(mode, ctx)
    held = Held(
        msg["sid"],
        spec,
        state_dir(),
        msg["cgroup"],
        publisher,
        name=msg["name"],
        ctl=ctl,
        pid=int(msg["pid"]),
        sockets=[socket.socket(fileno=fd) for fd in rest[unique:]],
    )

    def relays() -> dict[Mapping, socket.socket]:
        socks = [socket.socket(fileno=fd) for fd in rest[:unique]]
        return {Mapping.from_row(*row): socks[i] for row, i in zip(rows, index, strict=True)}

    return held, relays if publisher is not None else lambda: {}


def _finish_detached(held: Held, code: int) -> int:
    gc.disable()  # tearing down, then exiting: nothing to collect, 20,000 rows to read (#11)
    close_control(held.ctl, held.state_dir, held.sid)
    engine = Engine(State(held.state_dir))
    engine.mark_removing(held.sid)  # nothing restores its rules from here on (issue 13)
    rec = engine.state.find_sandbox(held.sid)
    errors: list[str] = []
    if rec is not None:
        # The NAT elements go first, while the relays still hold their bindings: with every host
        # binding held, no other owner can hold those keys, so they go by key with no read of a
        # table that may hold 20,000 elements (#11). (Holding them with dup()s instead needed a
        # second descriptor per relay: 10,000 relays then ran out of descriptors, EMFILE.)
        known = None
        if rec.sandbox.publish_mode in ("nat", "ebpf"):  # their publisher adds elements, no rules
            nat_maps = [m for m in rec.sandbox.mappings if rules.nat_capable(m)]
            known = known_if_held(nat_maps, held_bindings(held.sockets + _relay_sockets(held)))
        errors += engine.teardown(rec, known=known)
    errors += held.publisher.unpublish() if held.publisher is not None else []
    if rec is not None:
        engine.mark_exited(rec, code)
    for problem in errors:
        print(f"portwright: teardown of {held.sid}: {problem}", file=sys.stderr)
    return code


def _relay_sockets(held: Held) -> list[socket.socket]:
    return list(held.publisher.relays().values()) if held.publisher is not None else []


def _send(chan: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(msg).encode()
    header = len(data).to_bytes(4, "big")
    fds = fds or []
    chunks = [fds[i : i + MAX_FDS_PER_MESSAGE] for i in range(0, len(fds), MAX_FDS_PER_MESSAGE)] or [[]]
    chan.sendall(len(chunks).to_bytes(4, "big"))
    for chunk in chunks:
        socket.send_fds(chan, [len(chunk).to_bytes(4, "big")], chunk)
    chan.sendall(header + data)


def _recv(chan: socket.socket) -> tuple[dict[str, Any], list[int]]:
    fds: list[int] = []
    n = int.from_bytes(_exactly(chan, 4), "big")
    for _ in range(n):
        msg, got, _flags, _addr = socket.recv_fds(chan, 4, MAX_FDS_PER_MESSAGE)
        if len(msg) != 4 or len(got) != int.from_bytes(msg, "big"):
            raise ValueError("the descriptor hand-off was cut short")
        fds += got
    size = int.from_bytes(_exactly(chan, 4), "big")
    if size > HANDOFF_LIMIT:
        raise ValueError("hand-off message too large")
    return json.loads(_exactly(chan, size)), fds


def _exactly(chan: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = chan.recv(n - len(buf))
        if not chunk:
            raise ValueError("the other side hung up")
        buf += chunk
    return buf
