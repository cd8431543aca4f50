"""Worker processes: the same TCP listeners served by several processes, one event loop each.

One Python process runs on one core at a time (the GIL; a second loop *thread* was measured to
cost more than it gave, see server.py). docker-proxy, one Go process per port, uses every core
under load. So the relay forks worker processes: each runs one ``EventLoop`` in its main thread
and registers every TCP listener it is given with EPOLLEXCLUSIVE, so the kernel wakes one process
per incoming connection and connections spread over the cores. The listener is the *same* socket
in every process (passed with SCM_RIGHTS, or inherited), not a SO_REUSEPORT group: another root
process cannot join it, and closing it everywhere frees the port.

- ``default_workers()``: one per core, at most ``MAX_DEFAULT_WORKERS``;
- the parent is worker 0 (it keeps UDP, whose flow tables need one owner); ``WorkerPool`` forks
  the others *before* the parent starts any thread, with no descriptor of the parent's but their
  control socket (a worker holds only what it serves);
- a worker dies with its parent (PR_SET_PDEATHSIG SIGKILL), so a killed relay never leaves a
  copy of a listener behind that would accept connections nobody serves;
- control: one SOCK_SEQPACKET socketpair per worker, one JSON message each way:
  ``add`` (a listener, its descriptor in SCM_RIGHTS), ``addn`` (up to ``FDS_PER_MSG`` listeners in
  one message: the shared relay's batches), ``del`` (answered once the worker closed its copy, so
  the port is free when ``remove`` returns), ``stats`` (the worker's counters by listener id,
  which the parent adds to its own: ``counters.total``), ``ids`` (the listener ids it serves). A
  worker whose control socket closes (its parent stopped or died) exits.
"""

from __future__ import annotations

import array
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from ..kernel.proc import set_parent_death_signal, set_process_name
from ..model import Mapping
from . import plog
from .counters import new_counters
from .listener import attach_tcp, detach_tcp
from .loop import CONNECT_TIMEOUT, EventLoop

#: Workers when not told: one per core, but no more than this (the issue's cap: past 4 processes
#: the per-process memory grows faster than a Docker host's proxy load needs).
MAX_DEFAULT_WORKERS = 4
#: Seconds the parent waits for a worker's answer (del, stats) before calling it unresponsive.
ANSWER_TIMEOUT = 5.0
#: Control socket buffers: a stats answer for thousands of busy listeners is one message.
CTL_BUFFER = 4 << 20
_MAX_MSG = CTL_BUFFER
#: Listeners handed over in one message (``add_many``); the kernel's SCM_MAX_FD is 253.
FDS_PER_MSG = 200


def default_workers() -> int:
    """One worker process per core, at most MAX_DEFAULT_WORKERS."""
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS))


def resolve_workers(n: int) -> int:
    """``--proxy-workers`` 0 means the default."""
    return n if n > 0 else default_workers()


def send_msg(sock: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    import json  # here: a relay with no worker never loads it

    data = json.dumps(msg).encode()
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([data], anc)


def recv_msg(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the descriptors that came with it; (None, []) at EOF."""
    import json

    data, anc, _flags, _addr = sock.recvmsg(_MAX_MSG, socket.CMSG_SPACE(4 * FDS_PER_MSG))
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
            fds.extend(a)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), fds


def _tune_ctl(s: socket.socket) -> None:
    for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):  # SO_SNDBUFFORCE, SO_RCVBUFFORCE
        try:
            s.setsockopt(socket.SOL_SOCKET, force, CTL_BUFFER)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, opt, CTL_BUFFER)


class WorkerPool:
    """``n`` worker processes forked from this one (the caller is worker 0 and not counted)."""

    def __init__(
        self, n: int, *, name: str, proxy_protocol: bool = False, connect_timeout: float = CONNECT_TIMEOUT
    ) -> None:
        self.n = n
        self.name = name
        self.proxy_protocol = proxy_protocol
        self.connect_timeout = connect_timeout
        self.pids: list[int] = []
        self.ctls: list[socket.socket] = []

    def start(self) -> None:
        """Fork the workers. Call it before this process starts threads."""
        for i in range(1, self.n + 1):
            pid, ctl = self._fork(i)
            self.pids.append(pid)
            self.ctls.append(ctl)

    def _fork(self, i: int) -> tuple[int, socket.socket]:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        _tune_ctl(parent)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            parent.close()
            _worker_main(child, i, f"{self.name}{i}", self.proxy_protocol, self.connect_timeout)
        child.close()
        parent.settimeout(ANSWER_TIMEOUT)
        return pid, parent

    def replace(self, index: int, listeners: list[tuple[int, Mapping, socket.socket]]) -> None:
        """Start a new worker in place of dead worker ``index`` and give it ``listeners``."""
        self.ctls[index].close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pids[index], os.WNOHANG)
        pid, ctl = self._fork(index + 1)
        self.pids[index], self.ctls[index] = pid, ctl
        msg: dict[str, Any]
        for lid, m, sock in listeners:
            msg = {"op": "add", "id": lid, "m": m.to_json(), "twin": None}
            with contextlib.suppress(OSError):
                send_msg(ctl, msg, [sock.fileno()])

    def add(self, lid: int, m: Mapping, twin: Mapping | None, sock: socket.socket) -> None:
        """Serve a TCP listener in every worker too (each gets its own descriptor of the socket)."""
        msg = {"op": "add", "id": lid, "m": m.to_json(), "twin": twin.to_json() if twin else None}
        for ctl in self.ctls:
            try:
                send_msg(ctl, msg, [sock.fileno()])
            except OSError:
                pass  # a dead worker: alive() says so

    def add_many(self, items: list[tuple[int, Mapping, socket.socket]]) -> None:
        """``add`` for many TCP listeners, in one message per FDS_PER_MSG of them (the shared relay
        batches a port range's registrations this way: one wake-up of each worker, not one each)."""
        for i in range(0, len(items), FDS_PER_MSG):
            chunk = items[i : i + FDS_PER_MSG]
            msg = {"op": "addn", "items": [{"id": lid, "m": m.to_json()} for lid, m, _ in chunk]}
            fds = [sock.fileno() for _, _, sock in chunk]
            for ctl in self.ctls:
                try:
                    send_msg(ctl, msg, fds)
                except OSError:
                    pass  # a dead worker: alive() says so

    def remove(self, lid: int) -> None:
        """Stop serving a listener everywhere; returns when every live worker closed its copy."""
        self._ask({"op": "del", "id": lid})

    def served(self) -> list[set[int]]:
        """The listener ids each live worker serves (status: is every port in every worker?)."""
        return [set(a.get("ids", [])) for a in self._ask({"op": "ids"})]

    def stats(self) -> list[dict[int, list[int]]]:
        """Each worker's counters by listener id."""
        return [{int(k): v for k, v in a.get("ctr", {}).items()} for a in self._ask({"op": "stats"})]

    def _ask(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        answers = []
        for ctl in self.ctls:
            try:
                send_msg(ctl, msg)
                a, fds = recv_msg(ctl)
            except (OSError, ValueError):
                continue
            for fd in fds:
                os.close(fd)
            if a is not None:
                answers.append(a)
        return answers

    def alive(self) -> list[bool]:
        out = []
        for pid in self.pids:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            out.append(done == 0)
        return out

    def stop(self) -> None:
        """Close the control sockets (each worker then exits) and reap the workers."""
        for ctl in self.ctls:
            ctl.close()
        deadline = time.monotonic() + ANSWER_TIMEOUT
        for pid in self.pids:
            while True:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.005)
        self.ctls.clear()
        self.pids.clear()


def _worker_main(ctl: socket.socket, index: int, name: str, proxy_protocol: bool, timeout: float) -> None:
    """A forked worker: serve what the parent sends until its control socket closes."""
    code = 0
    try:
        set_parent_death_signal(signal.SIGKILL)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)  # not the parent's handlers (a supervisor's teardown)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        _close_inherited({ctl.fileno(), plog.sink_fd})
        set_process_name(name)
        ctl.setblocking(False)
        loop = EventLoop(index, name, timeout)
        served: dict[int, Any] = {}
        loop.watch(ctl.fileno(), _control_handler(loop, ctl, served, proxy_protocol), level_triggered=True)
        loop._run()
    except BaseException:  # noqa: BLE001 - a worker must never return into the parent's code
        code = 1
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(code)


def _close_inherited(keep: set[int]) -> None:
    """Close every descriptor the fork copied except stdio and ``keep`` (the control socket and
    the relay's log file)."""
    fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _control_handler(
    loop: EventLoop, ctl: socket.socket, served: dict[int, Any], proxy_protocol: bool
) -> Callable[[int, int], None]:
    def on_ctl(fd: int, ev: int) -> None:
        while True:
            try:
                msg, fds = recv_msg(ctl)
            except BlockingIOError:
                return
            except (OSError, ValueError):
                msg, fds = None, []
            if msg is None:
                loop.stopping = True  # the parent is gone or stopped us
                return
            op = msg.get("op")
            if op == "add" and fds:
                m = Mapping.from_json(msg["m"])
                twin = Mapping.from_json(msg["twin"]) if msg.get("twin") else None
                sock = socket.socket(fileno=fds[0])
                for extra in fds[1:]:
                    os.close(extra)
                served[int(msg["id"])] = attach_tcp(
                    loop, m, sock, new_counters(), proxy_protocol, twin, exclusive=True
                )
            elif op == "addn" and len(fds) == len(msg.get("items", ())):
                for item, fd in zip(msg["items"], fds, strict=True):
                    sock = socket.socket(fileno=fd)
                    m = Mapping.from_json(item["m"])
                    lst = attach_tcp(loop, m, sock, new_counters(), proxy_protocol, None, exclusive=True)
                    served[int(item["id"])] = lst
            elif op == "del":
                lst = served.pop(int(msg["id"]), None)
                if lst is not None:
                    detach_tcp(loop, lst)
                send_msg(ctl, {"ok": True})
            elif op == "ids":
                send_msg(ctl, {"ids": list(served)})
            elif op == "stats":
                ctr = {str(k): lst.ctr for k, lst in served.items() if any(lst.ctr)}
                send_msg(ctl, {"ctr": ctr})
            else:
                for extra in fds:
                    os.close(extra)

    return on_ctl
