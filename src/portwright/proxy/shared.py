"""The shared relay behind ``portwright-proxy``: one daemon serving every port dockerd publishes.

dockerd starts one userland proxy per port and address family. With portwright that process is
the tiny waiter (``waiter.py``); the ports themselves live here, in one relay process and its
worker processes (``workers.py``), served by the same loop and splice relay as
``--publish-mode proxy``. 400 waiters plus one relay replace 400 Python interpreters.

Protocol, on a SOCK_SEQPACKET unix socket ``<dir>/relay.sock`` (the directory and the socket are
root's only, and every peer's SO_PEERCRED uid must be 0):

- a waiter sends ``PWW1\\0`` + its arguments, each ended by ``\\0`` (docker-proxy's flags, parsed
  by ``dockerproxy.parse_args``), with dockerd's listening socket in SCM_RIGHTS when it was
  given ``-use-listen-fd``. The answer is docker-proxy's fd-3 text, ``0\\n`` or
  ``1\\n<message>`` (a refusal closes the connection and changes nothing). From then on the
  connection *is* the port: when it closes (the waiter exited or was killed) the port is closed
  at once, in the relay and in every worker;
- ``PWQ1\\0`` asks for the status (JSON: the relay's pid, its workers, every port with the
  container it serves, its waiter's pid and the counters of all processes added up); that is
  what ``status`` prints;
- anything else gets ``1\\n<what was wrong>`` and the connection is closed.

New TCP ports are served by the relay at once and handed to its workers in batches (every
``WORKER_BATCH_DELAY``, one message per worker), so a range registered port after port wakes each
worker a few times, not once per port; ``status`` says how many workers hold each port
(``in_workers``).

Lifetime: the first waiter starts the relay (``serve``; a flock on ``relay.lock`` keeps it
single); it exits about a second after its last port closed. A relay killed with SIGKILL takes
its workers with it (PR_SET_PDEATHSIG), so no listener copy is left accepting connections that
nobody serves; the waiters see their connection close and register their ports with a new relay
(``waiter.py``). A worker that dies is replaced and given every TCP listener again. Names:
``pw-relay`` and ``pw-relay-w<N>`` in ``ps``/``ss -p``; the waiters keep docker-proxy's command
line (``-container-ip``), and ``status`` maps each port to its container.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..kernel.proc import set_process_name
from ..model import Mapping
from . import plog
from .counters import TOTAL, new_counters, total
from .dockerproxy import FlagError, HelpRequested, _go_listen_error, mapping_for, parse_args
from .listener import Listener, attach_tcp, detach_tcp
from .loop import CONNECT_TIMEOUT, EventLoop
from .udp import UdpListener
from .waiter import REGISTER_TAG, relay_dir
from .workers import WorkerPool, resolve_workers

log = plog.get("portwright.proxy.shared")

QUERY_TAG = b"PWQ1\0"
RELAY_NAME = "pw-relay"
#: Seconds without any port before the relay exits (a container restart re-registers within it).
IDLE_EXIT = 1.0
#: Seconds a new port is served by the relay alone before its workers get it too, in one batch
#: with the ports registered meanwhile (dockerd registers a range one port after the other: one
#: message per worker per batch instead of one per port).
WORKER_BATCH_DELAY = 0.05
#: Seconds without a new registration after which the relay gives back free heap pages and the
#: pages of read-only files (libpython's code run only at start-up and registration): trim_memory.
TRIM_AFTER = 1.0
#: madvise(2) advice (include/uapi/asm-generic/mman-common.h): unmap these pages from this process;
#: a clean file page stays in the page cache and comes back with a minor fault when it is used.
MADV_DONTNEED = 4
#: Pending waiter connections the control socket queues (dockerd starts a range's proxies at once).
CTL_BACKLOG = 4096
_MAX_REQUEST = 8192
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def paths(directory: str) -> tuple[str, str, str]:
    """(socket, lock, log) of a relay directory."""
    return (
        os.path.join(directory, "relay.sock"),
        os.path.join(directory, "relay.lock"),
        os.path.join(directory, "relay.log"),
    )


@dataclass(slots=True, eq=False)
class Port:
    """One registered port: its waiter's connection, the socket and where it is served."""

    lid: int
    mapping: Mapping
    sock: socket.socket
    conn: socket.socket
    waiter_pid: int
    ctr: list[int] = field(default_factory=new_counters)
    local: Listener | UdpListener | None = None


class Relay:
    """The relay daemon; ``run`` serves until the last port closed (or SIGTERM)."""

    def __init__(self, directory: str, workers: int = 0, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.dir = directory
        self.workers = resolve_workers(workers)
        self.connect_timeout = connect_timeout
        self.sock_path, self.lock_path, self.log_path = paths(directory)
        self.ports: dict[int, Port] = {}  # by the waiter connection's fd
        self.pending: dict[int, socket.socket] = {}  # connections that have not registered yet
        self.to_workers: list[Port] = []  # TCP ports the workers do not serve yet (a batch)
        self.next_id = 1
        self.idle_since: float | None = None
        self.pool: WorkerPool | None = None
        self.loop: EventLoop | None = None
        self.ctl: socket.socket | None = None
        self.sock_ino = 0
        self.last_registration = 0.0  # monotonic time of the last one; 0: trimmed since

    # -- start and stop --------------------------------------------------------------------------
    def run(self) -> int:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        lock = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)
            return 0  # another relay serves this directory
        self._log_to_file()
        from .server import raise_nofile

        raise_nofile()
        pool = WorkerPool(self.workers - 1, name=f"{RELAY_NAME}-w", connect_timeout=self.connect_timeout)
        if pool.n:
            gc.collect()
            gc.freeze()  # start-up's objects are never scanned: their pages stay shared with the workers
        pool.start()  # forks: before any socket or thread of the relay exists
        self.pool = pool
        try:
            self._serve()
        finally:
            self._shutdown()
            os.close(lock)
        return 0

    def _log_to_file(self) -> None:
        """Every proxy logger of this process writes to relay.log (``plog.sink``: no logging)."""
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

        def write(text: str) -> None:
            with contextlib.suppress(OSError):
                os.write(fd, log_line(time.time(), os.getpid(), text).encode(errors="replace"))

        plog.sink, plog.sink_fd = write, fd  # the workers keep the fd (workers._close_inherited)

    def _serve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)  # a dead relay's; we hold the lock
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK)
        old = os.umask(0o077)
        try:
            ctl.bind(self.sock_path)
        finally:
            os.umask(old)
        os.chmod(self.sock_path, 0o600)
        self.sock_ino = os.stat(self.sock_path).st_ino
        ctl.listen(CTL_BACKLOG)
        self.ctl = ctl
        loop = EventLoop(0, RELAY_NAME, self.connect_timeout)
        self.loop = loop
        loop.tick = self._tick
        loop.watch(ctl.fileno(), self._on_accept, level_triggered=True)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        log.info("relay started: %d worker process(es), socket %s", self.workers, self.sock_path)
        loop._run()

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.loop is not None:
            self.loop.stopping = True
            self.loop.wake()

    def _stop_listening(self) -> None:
        """Leave the control socket's path first, so that a new waiter starts a new relay."""
        if self.ctl is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.sock_path).st_ino == self.sock_ino:  # still ours, not a successor's
                os.unlink(self.sock_path)
        if self.loop is not None:
            self.loop.forget(self.ctl.fileno())  # an event of this wake-up may still name it
        self.ctl.close()
        self.ctl = None

    def _shutdown(self) -> None:
        self._stop_listening()
        for p in list(self.ports.values()):
            p.sock.close()
            p.conn.close()
        self.ports.clear()
        for c in self.pending.values():
            c.close()
        self.pending.clear()
        if self.pool is not None:
            self.pool.stop()
        log.info("relay stopped")

    def _tick(self, now: float) -> None:
        self._flush_workers()
        self._revive_workers()
        if self.last_registration and now - self.last_registration >= TRIM_AFTER:
            self.last_registration = 0.0
            trim_memory()
        if self.ports or self.pending:
            self.idle_since = None
            return
        if self.idle_since is None:
            self.idle_since = now
        elif now - self.idle_since >= IDLE_EXIT and self.loop is not None:
            self._stop_listening()
            self.loop.stopping = True

    def _flush_workers(self) -> None:
        """Hand the batch of new TCP ports to every worker."""
        if self.to_workers and self.pool is not None:
            self.pool.add_many([(p.lid, p.mapping, p.sock) for p in self.to_workers])
        self.to_workers.clear()

    def _revive_workers(self) -> None:
        """A dead worker is replaced and given every TCP listener again (never silently fewer)."""
        pool = self.pool
        if pool is None:
            return
        for i, ok in enumerate(pool.alive()):
            if ok:
                continue
            log.warning("worker %s died; starting a new one", pool.pids[i])
            pool.replace(
                i, [(p.lid, p.mapping, p.sock) for p in self.ports.values() if p.mapping.proto != "udp"]
            )

    # -- control connections -----------------------------------------------------------------------
    def _on_accept(self, fd: int, ev: int) -> None:
        assert self.ctl is not None and self.loop is not None
        for _ in range(64):
            try:
                conn, _addr = self.ctl.accept()
            except BlockingIOError:
                return
            except OSError as e:
                log.warning("control socket: %s", e.strerror)
                return
            conn.setblocking(False)
            self.pending[conn.fileno()] = conn
            self.loop.watch(conn.fileno(), self._on_conn, level_triggered=True)

    def _on_conn(self, fd: int, ev: int) -> None:
        port = self.ports.get(fd)
        if port is not None:  # a registered port's waiter: only its end matters
            try:
                data = port.conn.recv(64)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._unregister(port)
            return
        conn = self.pending.get(fd)
        if conn is None:
            return
        try:
            data, fds = _recv_request(conn)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        del self.pending[fd]
        pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if uid != 0:
            # Answered after reading its message: closing with unread data would reset instead.
            for extra in fds:
                os.close(extra)
            _answer(conn, f"1\npermission denied: uid {uid} is not root; the relay serves root only")
            log.warning("refused a request from pid %d uid %d", pid, uid)
        elif data.startswith(REGISTER_TAG):
            try:
                if self._register(conn, data[len(REGISTER_TAG) :], fds, pid):
                    return
            except Exception as e:  # noqa: BLE001 - the waiter gets an answer, the relay goes on
                log.exception("registration failed")
                _answer(conn, f"1\nportwright-proxy relay: registration failed: {e}")
        else:
            for extra in fds:
                os.close(extra)
            if data.startswith(QUERY_TAG):
                import json  # only for status: not resident in a relay nobody asks

                _answer(conn, json.dumps(self.status()), big=True)
            elif data:
                _answer(
                    conn, "1\nbad request: expected a portwright-proxy registration (PWW1) or query (PWQ1)"
                )
        self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        assert self.loop is not None
        fd = conn.fileno()
        self.loop.forget(fd)
        with contextlib.suppress(OSError):
            self.loop.ep.unregister(fd)
        conn.close()

    # -- ports ---------------------------------------------------------------------------------
    def _register(self, conn: socket.socket, body: bytes, fds: list[int], pid: int) -> bool:
        """Open the port waiter ``pid`` asks for; answer it. True when the port is now served."""
        for extra in fds[1:]:
            os.close(extra)
        try:
            argv = [a.decode() for a in body.split(b"\0")[:-1]]
            a = parse_args(argv)
            m = mapping_for(a)
        except (FlagError, HelpRequested, ValueError, UnicodeDecodeError) as e:
            if fds:
                os.close(fds[0])
            _answer(conn, f"1\nbad arguments: {str(e) or 'help is not a registration'}")
            return False
        # The waiter passes whatever its fd 4 is; only -use-listen-fd makes it dockerd's socket (a
        # caller may leave any descriptor there: a pipe, a file), and only then is it wrapped.
        given: socket.socket | None = None
        if fds and not a.use_listen_fd:
            os.close(fds[0])
        elif fds:
            try:
                given = socket.socket(fileno=fds[0])
            except OSError as e:
                os.close(fds[0])
                _answer(conn, f"1\nbad arguments: -use-listen-fd: fd 4 is not a socket ({e.strerror})")
                return False
        try:
            sock = self._listener(m, given)
        except Exception as e:  # noqa: BLE001 - every failure goes back as "1\n<message>"
            _answer(conn, "1\n" + _go_listen_error(a, e))
            return False
        port = Port(self.next_id, m, sock, conn, pid)
        self.next_id += 1
        self.last_registration = time.monotonic()
        self._serve_port(port)
        self.ports[conn.fileno()] = port
        if not _answer(conn, "0\n"):
            self._unregister(port)  # the waiter is already gone
            return True
        log.info("port %s for pid %d", m.docker_format(), pid)
        return True

    @staticmethod
    def _listener(m: Mapping, given: socket.socket | None) -> socket.socket:
        from .server import ProxyServer, open_listener

        if given is not None:
            return ProxyServer._adopt(m, given)
        return open_listener(m)

    def _serve_port(self, port: Port) -> None:
        assert self.loop is not None
        m = port.mapping
        if m.proto == "udp":
            u = UdpListener(self.loop, m, port.sock, port.ctr, False, 90.0)
            self.loop.udp.append(u)
            self.loop.watch(port.sock.fileno(), u.on_event, level_triggered=True)
            port.local = u
            return
        port.local = attach_tcp(self.loop, m, port.sock, port.ctr, False, None, exclusive=self.workers > 1)
        if self.pool is not None and self.pool.n:
            self.to_workers.append(port)
            if not self.loop.soon:
                self.loop.soon = time.monotonic() + WORKER_BATCH_DELAY

    def _unregister(self, port: Port) -> None:
        assert self.loop is not None
        self.ports.pop(port.conn.fileno(), None)
        local = port.local
        if isinstance(local, UdpListener):
            fd = port.sock.fileno()
            self.loop.forget(fd)
            with contextlib.suppress(OSError):
                self.loop.ep.unregister(fd)
            local.close()
            self.loop.udp.remove(local)
            port.sock.close()
        elif local is not None:
            detach_tcp(self.loop, local)
            if port in self.to_workers:
                self.to_workers.remove(port)  # never handed over: nothing to take back
            elif self.pool is not None and self.pool.n:
                self.pool.remove(port.lid)  # every worker closed its copy when this returns
        else:
            port.sock.close()
        self._drop(port.conn)
        log.info("port %s closed (waiter %d gone)", port.mapping.docker_format(), port.waiter_pid)

    def status(self) -> dict[str, Any]:
        remote = self.pool.stats() if self.pool is not None else []
        held = self.pool.served() if self.pool is not None else []
        ports = []
        for p in sorted(self.ports.values(), key=lambda p: (p.mapping.host_port, str(p.mapping.host_ip))):
            m = p.mapping
            ports.append(
                {
                    "binding": f"{m.host_binding()}/{m.proto}",
                    "container": f"{m.container_ip}:{m.container_port}",
                    # the same, as fields (diagnose/relayview.py: who and ports read them)
                    "proto": m.proto,
                    "host_ip": str(m.host_ip),
                    "host_port": m.host_port,
                    "container_ip": str(m.container_ip),
                    "container_port": m.container_port,
                    "waiter_pid": p.waiter_pid,
                    "counters": total([p.ctr, *(w[p.lid] for w in remote if p.lid in w)]),
                    # connections each process accepted: the relay's, then each worker's
                    "by_process": [p.ctr[TOTAL], *(w[p.lid][TOTAL] if p.lid in w else 0 for w in remote)],
                    # worker processes holding this TCP listener (a new one joins them within 50 ms)
                    "in_workers": sum(p.lid in ids for ids in held),
                }
            )
        return {
            "pid": os.getpid(),
            "workers": [os.getpid(), *(self.pool.pids if self.pool else [])],
            "ports": ports,
        }


def clean_file_ranges(smaps: str) -> list[tuple[int, int]]:
    """The (start, end) of each read-only file mapping in /proc/PID/smaps text that holds no private
    copy of a page (``Anonymous: 0 kB``): giving those back is safe. Writable mappings and copied
    ones (a library's relocated read-only data) are never listed: dropping them would lose data."""
    out: list[tuple[int, int]] = []
    cur: tuple[int, int] | None = None
    for line in smaps.splitlines():
        head = line.split(None, 6)
        if not head:
            continue
        if "-" in head[0] and not head[0].endswith(":"):
            lo, _, hi = head[0].partition("-")
            ok = len(head) >= 6 and head[5].startswith("/") and "w" not in head[1]
            cur = (int(lo, 16), int(hi, 16)) if ok else None
            if cur is not None:
                out.append(cur)
        elif head[0] == "Anonymous:" and cur is not None and head[1] != "0":
            out.remove(cur)
            cur = None
    return out


def trim_memory() -> int:
    """Give back what the relay no longer uses once its registrations settle; the bytes of file
    mappings advised. First glibc's free heap pages (malloc_trim: the registrations' transient
    buffers left from 0 to 0.8 MB of them resident, depending on where they fell), then the pages
    of read-only files (``clean_file_ranges``): most of libpython's code that the relay runs once
    (imports, the first registrations) is resident only in the relay on a host with no other Python
    process, about 1.5 MB of its PSS there. A page used again comes back from the page cache."""
    try:
        with open("/proc/self/smaps") as f:
            ranges = clean_file_ranges(f.read())
        import ctypes  # here: only a relay that has served loads it

        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    except (OSError, AttributeError):
        return 0
    with contextlib.suppress(AttributeError):  # glibc only
        libc.malloc_trim(0)
    done = 0
    for lo, hi in ranges:
        if libc.madvise(lo, hi - lo, MADV_DONTNEED) == 0:
            done += hi - lo
    return done


def log_line(now: float, pid: int, text: str) -> str:
    """One relay.log line, as logging's ``%(asctime)s pw-relay[%(process)d] %(message)s`` was."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    return f"{stamp},{int(now * 1000) % 1000:03d} pw-relay[{pid}] {text}\n"


def _recv_request(conn: socket.socket) -> tuple[bytes, list[int]]:
    data, anc, _flags, _addr = conn.recvmsg(_MAX_REQUEST, socket.CMSG_SPACE(4 * 4))
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4]))
    return data, fds


def _answer(conn: socket.socket, text: str, big: bool = False) -> bool:
    data = text.encode(errors="replace")
    if not big:
        try:
            return conn.send(data) == len(data)  # a short answer on a fresh connection: no wait
        except BlockingIOError:
            pass
        except OSError:
            return False
    try:
        if big:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, 32, len(data) + 4096)  # SO_SNDBUFFORCE
        conn.setblocking(True)
        conn.settimeout(2.0)
        conn.send(data)
        conn.setblocking(False)
        return True
    except OSError:
        return False


def query(directory: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """The running relay's status (OSError when none runs)."""
    sock_path = paths(directory or relay_dir())[0]
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.send(QUERY_TAG)
        data = s.recv(64 << 20)
    import json

    result: dict[str, Any] = json.loads(data)
    return result


def _print_status(st: dict[str, Any], out: Callable[[str], None]) -> None:
    out(f"relay pid {st['pid']}, processes {' '.join(map(str, st['workers']))}")
    out(f"{'BINDING':<28} {'CONTAINER':<28} {'WAITER':>8} {'ACTIVE':>7} {'TOTAL':>9}")
    for p in st["ports"]:
        c = p["counters"]
        out(f"{p['binding']:<28} {p['container']:<28} {p['waiter_pid']:>8} {c['active']:>7} {c['total']:>9}")


def _serve_args(argv: Sequence[str]) -> dict[str, str] | None:
    """``serve --dir D --workers N --connect-timeout T`` as the waiter writes it, read without
    argparse (about 0.4 MB resident in the relay and each worker); None: anything else, for
    argparse to read and, if wrong, to explain."""
    if not argv or argv[0] != "serve" or len(argv) % 2 != 1:
        return None
    opts = dict(zip(argv[1::2], argv[2::2], strict=True))
    if not set(opts) <= {"--dir", "--workers", "--connect-timeout"}:
        return None
    try:
        int(opts.get("--workers", "0"))
        float(opts.get("--connect-timeout", "1"))
    except ValueError:
        return None
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    fast = _serve_args(argv)
    if fast is not None:
        set_process_name(RELAY_NAME)
        workers = int(fast.get("--workers", os.environ.get("PORTWRIGHT_PROXY_WORKERS", "0")))
        timeout = float(fast.get("--connect-timeout", CONNECT_TIMEOUT))
        return Relay(fast.get("--dir") or relay_dir(), workers, timeout).run()
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m portwright.proxy.shared", description=__doc__.splitlines()[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the relay (the waiters start it on demand)")
    s.add_argument("--dir", default=None, help="relay directory (default /run/portwright/proxy)")
    s.add_argument("--workers", type=int, default=int(os.environ.get("PORTWRIGHT_PROXY_WORKERS", "0")))
    s.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT)
    q = sub.add_parser("status", help="the running relay's ports, containers and counters")
    q.add_argument("--dir", default=None)
    q.add_argument("--json", action="store_true")
    i = sub.add_parser("install", help="build the waiter dockerd starts (--userland-proxy-path)")
    i.add_argument("path", nargs="?", default=None)
    i.add_argument("--dir", default=None)
    i.add_argument(
        "--workers", type=int, default=0, help="relay worker processes (0: one per core, at most 4)"
    )
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        set_process_name(RELAY_NAME)
        return Relay(args.dir or relay_dir(), args.workers, args.connect_timeout).run()
    if args.cmd == "install":
        return install(args.path, args.dir, args.workers)
    return show_status(args.dir, args.json)


def install(path: str | None, directory: str | None, workers: int) -> int:
    """Build the waiter dockerd starts (``portwright proxy install`` and this module's CLI)."""
    import platform

    from .waiter import DEFAULT_INSTALL_PATH, MACHINES, build, link_python_entry_point

    path = path or DEFAULT_INSTALL_PATH
    if platform.machine() not in MACHINES:
        target = link_python_entry_point(path)
        print(
            f"{path}: the waiter is written for x86_64 and aarch64, not {platform.machine()}; linked the "
            f"Python entry point {target} instead (one interpreter, ~8 MB, per port). "
            f"dockerd: --userland-proxy-path={path}"
        )
        return 0
    size = build(path, directory=directory or relay_dir(), workers=workers)
    print(f'{path}: {size} bytes. dockerd: --userland-proxy-path={path} (daemon.json: "userland-proxy-path")')
    return 0


def show_status(directory: str | None, as_json: bool) -> int:
    """Print the running relay's ports, containers and counters (``portwright proxy status``)."""
    directory = directory or relay_dir()
    try:
        st = query(directory)
    except OSError as e:
        print(f"no shared relay runs under {directory} ({e.strerror}); it starts with dockerd's first port")
        return 1
    if as_json:
        import json

        print(json.dumps(st, indent=2))
    else:
        _print_status(st, print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
