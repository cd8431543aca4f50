"""The supervisor: one process per sandbox that creates it, runs CMD, holds its ports, tears down.

``run`` in the foreground *is* the supervisor; ``run -d`` starts ``python -m portwright
_supervise NAME`` in a new session and waits on a pipe for "ok" or the one-line error. The
supervisor records intent in state before each kernel object, so a supervisor killed at any
moment leaves a record the reconcile pass can clear. It owns the reservation sockets and the
proxy (so ``ss -ntlp`` names ``portwright`` and the sandbox), and serves stats on a unix socket.
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
from dataclasses import asdict, dataclass, field

from . import ipam
from .engine import DEFAULT_NETWORK, NETNS_PREFIX, Engine, new_id, owner_tag, require_root
from .errors import BadInput, Conflict, KernelError, NotFound, PortInUse, PortwrightError
from .kernel import cgroup, netlink, netns, sysctl
from .kernel import sockets as ksockets
from .kernel.proc import set_process_name
from .model import PUBLISH_MODES, Sandbox
from .publish.base import Publisher, Target, allocate, publish_all_specs
from .spec import check_name, parse_env, parse_expose, parse_publish
from .state import State, proc_start_time

# How often a supervisor re-checks Docker's DOCKER-USER hook, so that a dockerd started (or
# restarted) after the sandbox does not cut its traffic with a FORWARD DROP policy.
DOCKER_USER_RECHECK_SECONDS = 5.0
STOP_GRACE_SECONDS = 10.0  # as docker stop: SIGTERM, then SIGKILL after the grace period
FD_LIMIT_TARGET = 1 << 20  # root may raise the hard limit up to fs.nr_open


@dataclass(slots=True)
class RunOptions:
    cmd: list[str]
    name: str | None = None
    network: str = DEFAULT_NETWORK
    publish: list[str] = field(default_factory=list)
    publish_all: bool = False
    expose: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    publish_mode: str = "nat"
    detach: bool = False
    proxy_protocol: bool = False
    udp_timeout: float = 90.0  # idle seconds before a relayed UDP flow is forgotten
    remove: bool = False  # --rm: forget a detached sandbox when CMD exits
    cwd: str = "/"  # CMD's working directory (the user's, when started from the CLI)

    def validate(self) -> None:
        """Everything that can be checked without touching the kernel; raises BadInput."""
        if not self.cmd:
            raise BadInput("no command given; usage: portwright run [OPTIONS] -- CMD [ARG...]")
        if self.name is not None:
            check_name(self.name)
        for p in self.publish:
            parse_publish(p)
        for e in self.expose:
            parse_expose(e)
        for e in self.env:
            parse_env(e)
        if not 1 <= self.udp_timeout <= 86400:
            raise BadInput(f"--udp-timeout {self.udp_timeout:g}: give 1 to 86400 seconds")
        if self.publish_mode not in PUBLISH_MODES:
            raise BadInput(f"--publish-mode {self.publish_mode!r} is unknown; use one of {', '.join(PUBLISH_MODES)}")
        if self.network == "host" and (self.publish or self.publish_all):
            raise BadInput("published ports are discarded when using host network mode; drop -p/-P "
                           "(the command's ports are the host's ports) or use a bridge network")
        if self.network == "none" and (self.publish or self.publish_all):
            raise BadInput("--network none has no interface to publish on; drop -p/-P or use a bridge network")
        exe = self.cmd[0]
        # A relative path is relative to CMD's directory (the user's), not to the supervisor's,
        # which is / for a detached run.
        found = (shutil.which(exe) if "/" not in exe
                 else exe if os.access(os.path.join(self.cwd, exe), os.X_OK) else None)
        if not found:
            raise BadInput(f"command {exe!r} not found or not executable; give a program on PATH or an absolute path")


def _close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def control_path(state: State, sid: str) -> str:
    return os.path.join(state.dir, "ctl", f"{sid}.sock")


def grace_path(state_dir: str, sid: str) -> str:
    """Where ``stop -t N`` leaves the grace period before it sends SIGTERM."""
    return os.path.join(state_dir, "ctl", f"{sid}.grace")


def read_grace(state_dir: str, sid: str) -> float:
    try:
        with open(grace_path(state_dir, sid)) as f:
            return max(0.0, float(f.read().strip()))
    except (OSError, ValueError):
        return STOP_GRACE_SECONDS


def _unix_op(sock: socket.socket, path: str, op: str) -> None:
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
        _unix_op(s, control_path(state, sid), "connect")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return json.loads(data or b"{}")  # type: ignore[no-any-return]
    except OSError:
        return {}
    finally:
        s.close()


class Supervisor:
    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.engine = Engine()
        self.state = self.engine.state
        self.publisher: Publisher | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self.stop_requested = threading.Event()
        self.exit_code: int | None = None
        self.cgroup: str | None = None
        self.ctl: socket.socket | None = None

    # -------------------------------------------------------------- setup
    def setup(self) -> str:
        """Create everything; on any error, roll back and re-raise. Returns the sandbox id."""
        o = self.opts
        o.validate()
        require_root("portwright run")
        specs = [parse_publish(p) for p in o.publish]
        expose = [parse_expose(e) for e in o.expose]
        if o.publish_all:
            specs += publish_all_specs(expose)
        env = dict(os.environ)
        env.update(parse_env(e) for e in o.env)
        sid = new_id()
        name = o.name or f"pw_{sid[:8]}"
        if self.state.name_taken(name):
            raise Conflict(
                f"a sandbox named {name!r} already exists; remove it with 'portwright rm -f {name}' "
                "or choose another --name")
        host = o.network == "host"
        none = o.network == "none"
        net = None if host or none else self.engine.ensure_network(o.network)
        if host:
            self._check_host_expose(expose)
        with ExitStack() as stack:
            # 1. Record intent (and take addresses) before creating anything.
            ns_name = None if host else NETNS_PREFIX + name
            veth = None if net is None else "pwv" + sid[:11]
            with self.state.tx():
                ip4 = ip6 = None
                if net is not None and self.state.find_network(net.name) is None:
                    # 'network rm' won the race: its transaction removed the network after we
                    # looked it up. Checked in the same transaction that records the sandbox.
                    raise NotFound(f"network {net.name!r} was removed while this sandbox was starting; "
                                   f"create it again with 'portwright network create {net.name}'")
                if net is not None:
                    others = [r.sandbox for r in self.state.sandboxes() if r.sandbox.network == net.name]
                    ip4 = ipam.next_address(net.subnet4, [s.ip4 for s in others if s.ip4])
                    if net.subnet6 is not None:
                        ip6 = ipam.next_address(net.subnet6, [s.ip6 for s in others if s.ip6])
                sb = Sandbox(id=sid, name=name, network=o.network, netns=netlink.netns_path(ns_name) if ns_name else None,
                             veth=veth, ip4=ip4, ip6=ip6,  # type: ignore[arg-type]
                             mac=ipam.mac_for(ip4, sid) if net else None,  # type: ignore[arg-type]
                             publish_mode=o.publish_mode)
                log_path = os.path.join(self.state.dir, "logs", f"{sid}.log") if o.detach else None
                self.state.insert_sandbox(sb, o.cmd, spec=asdict(o), log_path=log_path)
                self.state.update_sandbox(sid, supervisor_pid=os.getpid(),
                                          supervisor_start=proc_start_time(os.getpid()))
            self.sandbox = sb
            stack.callback(self._forget, sid)
            # 2. Namespace, veth, addresses, routes.
            if ns_name is not None:
                netlink.netns_add(ns_name)  # fails if pw-NAME exists: never delete what we did not make
                stack.callback(netlink.netns_delete, ns_name)
                if net is not None and veth is not None:
                    stack.callback(netlink.delete_link, veth)
                    netlink.create_veth(veth, ns_name, net.bridge, sb.mac)
                    netlink.configure_sandbox_ns(
                        ns_name, f"{ip4}/{net.subnet4.prefixlen}", str(net.gateway4),
                        f"{ip6}/{net.subnet6.prefixlen}" if ip6 and net.subnet6 else None,
                        str(net.gateway6) if ip6 else None)
                else:
                    netlink.ip("link", "set", "lo", "up", ns=ns_name)
                self._sandbox_sysctls(sb.netns)  # type: ignore[arg-type]
            # 3. Ports: allocate under the state lock (a real bind is the kernel's check).
            if specs:
                with self.state.tx():
                    known = []
                    for r in self.state.sandboxes():
                        for m in r.sandbox.mappings:
                            known.append((f"sandbox {r.name!r} ({r.id})", m))
                    bound = allocate(specs, Target(ip4, ip6), known,  # type: ignore[arg-type]
                                     dual_stack=o.publish_mode == "nat")
                    self.state.set_ports(sid, [m for m, _ in bound])
                stack.callback(_close_all, [s for _, s in bound if s is not None])
                self.publisher = self._make_publisher()
                stack.callback(self._unpublish)
                self.publisher.publish(owner_tag(sid), bound)
            # 4. The command, in a cgroup of its own so that teardown reaches every process it starts.
            self._serve_control()
            stack.callback(self._close_control)
            self.cgroup = cgroup.create(sid)
            stack.callback(cgroup.kill, self.cgroup)
            self._start_child(env, log_path)
            self.state.update_sandbox(sid, status="running", cmd_pid=self.child.pid,  # type: ignore[union-attr]
                                      cmd_start=proc_start_time(self.child.pid))  # type: ignore[union-attr]
            if net is not None:
                self._watch_docker_user()
            stack.pop_all()
        return sid

    def _forget(self, sid: str) -> None:
        with self.state.tx():
            self.state.remove_sandbox(sid)

    def _unpublish(self) -> None:
        if self.publisher is not None:
            self.publisher.unpublish()
            self.publisher = None

    def _make_publisher(self) -> Publisher:
        if self.opts.publish_mode == "proxy":
            from .publish.proxy import ProxyPublisher

            return ProxyPublisher(proxy_protocol=self.opts.proxy_protocol, udp_idle_timeout=self.opts.udp_timeout)
        from .publish.nat import NatPublisher

        return NatPublisher()

    def _check_host_expose(self, expose: list) -> None:  # type: ignore[type-arg]
        for e in expose:
            for port in e.ports:
                for ln in ksockets.holders(e.proto, port):
                    who = ksockets.describe_owner(e.proto, port, ln.ip)
                    raise PortInUse(f"{ln.binding}/{e.proto} (exposed with --network host)", who)

    @staticmethod
    def _sandbox_sysctls(ns_path: str) -> None:
        def inner() -> None:
            # Like Docker: servers in a sandbox may bind ports below 1024 without extra caps.
            try:
                sysctl.write(sysctl.UNPRIV_PORT_START, "0")
            except PortwrightError:
                pass

        netns.run_in(ns_path, inner)

    def _start_child(self, env: dict[str, str], log_path: str | None) -> None:
        o = self.opts
        out = None
        if log_path:
            out = open(log_path, "ab", buffering=0)
        join = cgroup.join_fn(self.cgroup)
        enter = netns.preexec_enter(self.sandbox.netns) if self.sandbox.netns else os.setsid

        def preexec() -> None:
            join()
            enter()

        try:
            self.child = subprocess.Popen(
                o.cmd, env=env, preexec_fn=preexec, cwd=o.cwd if os.path.isdir(o.cwd) else "/", stdin=subprocess.DEVNULL if o.detach else None,
                stdout=out, stderr=subprocess.STDOUT if out else None, close_fds=True)
        except OSError as e:
            raise BadInput(f"cannot start {o.cmd[0]!r}: {e.strerror}") from None
        finally:
            if out is not None:
                out.close()

    def _watch_docker_user(self) -> None:
        def loop() -> None:
            # Its own State handle: SQLite connections are not shared across threads here.
            engine = Engine(State(self.state.dir))
            while not self.stop_requested.wait(DOCKER_USER_RECHECK_SECONDS):
                engine.sync_docker_user()

        threading.Thread(target=loop, name="pw-docker-user", daemon=True).start()

    def _serve_control(self) -> None:
        path = control_path(self.state, self.sandbox.id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _unix_op(srv, path, "bind")
            srv.listen(8)
        except OSError as e:
            srv.close()
            raise KernelError(f"serving the control socket {path}", e.strerror or str(e)) from None
        self.ctl = srv

        def loop() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                with conn:
                    stats = self.publisher.stats() if self.publisher is not None else {}
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
        for path in (control_path(self.state, self.sandbox.id), grace_path(self.state.dir, self.sandbox.id)):
            try:
                os.unlink(path)
            except OSError:
                pass

    # -------------------------------------------------------------- run
    def wait(self) -> int:
        """Wait for CMD (forwarding signals) and return its exit code (128+N for a signal)."""
        assert self.child is not None
        child = self.child
        killer: list[threading.Timer] = []

        def kill_group() -> None:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        def forward(signum: int, _frame: object) -> None:
            if self.opts.detach or signum == signal.SIGTERM:
                self.stop_requested.set()
            try:
                os.killpg(child.pid, signum)
            except ProcessLookupError:
                pass
            if not killer:  # as docker stop: SIGKILL if CMD outlives the grace period
                t = threading.Timer(read_grace(self.state.dir, self.sandbox.id), kill_group)
                t.daemon = True
                t.start()
                killer.append(t)

        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
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
        cgroup.kill(self.cgroup)
        return 128 - rc if rc < 0 else rc

    def teardown(self, exit_code: int | None) -> list[str]:
        errors: list[str] = []
        self._close_control()
        if self.publisher is not None:
            errors += self.publisher.unpublish()
            self.publisher = None
        rec = self.state.find_sandbox(self.sandbox.id)
        if rec is not None:
            errors += self.engine.teardown(rec)
            self.engine.mark_exited(rec, exit_code)
        return errors


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


def run(opts: RunOptions, ready_fd: int | None = None) -> int:
    """The whole lifecycle. With ready_fd, report "ok ID" or "err CODE MESSAGE" through it."""
    set_process_name("portwright")
    raise_fd_limit()
    sup = Supervisor(opts)
    try:
        sid = sup.setup()
    except PortwrightError as e:
        if ready_fd is not None:
            os.write(ready_fd, f"err {e.exit_code} {e}\n".encode())
            os.close(ready_fd)
            return e.exit_code
        raise
    except BaseException as e:
        if ready_fd is not None:
            os.write(ready_fd, f"err 1 internal error: {type(e).__name__}: {e}\n".encode())
            os.close(ready_fd)
        raise
    if ready_fd is not None:
        os.write(ready_fd, f"ok {sid}\n".encode())
        os.close(ready_fd)
    code: int | None = None
    try:
        code = sup.wait()
    finally:
        for problem in sup.teardown(code):
            print(f"portwright: teardown: {problem}", file=sys.stderr)
    return code


def supervise_main(argv: list[str]) -> int:
    """Entry of ``python -m portwright _supervise NAME --ready-fd N`` (options as JSON on stdin)."""
    ready_fd = int(argv[argv.index("--ready-fd") + 1])
    opts = RunOptions(**json.loads(sys.stdin.read()))
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    return run(opts, ready_fd)


def start_detached(opts: RunOptions) -> str:
    """Spawn a supervisor in its own session; return the sandbox id or raise its error."""
    from .errors import PortwrightError as PE

    r, w = os.pipe()
    name = opts.name or "sandbox"
    state = State()
    log = open(os.path.join(state.dir, "logs", "supervisors.log"), "ab")
    # -I and cwd=/: the supervisor imports only the installed package, never a stray module that
    # happens to sit in the user's directory (CMD still runs in opts.cwd).
    proc = subprocess.Popen(
        [sys.executable, "-I", "-m", "portwright", "_supervise", name, "--ready-fd", str(w)],
        stdin=subprocess.PIPE, stdout=log, stderr=log, pass_fds=(w,), start_new_session=True,
        close_fds=True, cwd="/")
    os.close(w)
    log.close()
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(asdict(opts)).encode())
    proc.stdin.close()
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    msg = data.decode().strip()
    if msg.startswith("ok "):
        return msg[3:]
    if msg.startswith("err "):
        _, code, text = msg.split(" ", 2)
        err = PE(text)
        err.exit_code = int(code)
        raise err
    proc.wait(timeout=10)
    raise PE(f"the supervisor exited before the sandbox was ready (exit {proc.returncode}); "
             f"see {os.path.join(state.dir, 'logs', 'supervisors.log')}")
