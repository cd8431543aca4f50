"""What the engine calls: give a sandbox its resolv.conf, keep the resolver running, tell it of changes.

``LiveDns`` writes ``/etc/netns/pw-NAME/resolv.conf`` (what ``ip netns exec`` bind-mounts over
/etc/resolv.conf, and what portwright mounts for CMD the same way), starts the resolver on demand
(one per state directory, as the fork server is), and after every change asks it to reload,
waiting for its answer so a sandbox is resolvable by the time ``run`` returns. ``reconcile`` brings
a killed resolver back (or clears its files and hosts block when nothing needs it). ``NoDns`` is the
engine's collaborator under unit tests with a fake host. DNS trouble never fails a sandbox: it is
reported on stderr in one line and reconcile tries again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Protocol

from ..errors import KernelError, PortwrightError
from ..kernel import runner
from ..model import Network, Sandbox
from ..state import pid_alive
from . import hosts
from .paths import ctl_path, pid_path

NETNS_ETC = "/etc/netns"  # iproute2's per-namespace /etc (ip-netns(8))
START_TIMEOUT = 10.0
ASK_TIMEOUT = 2.0
RESOLV_OPTIONS = "options ndots:0 timeout:2 attempts:2"  # ndots:0: a bare NAME is asked as is
MARK = "# written by portwright: this network's resolver (portwright.dns)"
NETNS_RUN = "/run/netns"


def resolv_conf(net: Network) -> str:
    """The sandbox's resolv.conf: its network's gateway addresses, where the resolver listens."""
    lines = [MARK, f"nameserver {net.gateway4}"]
    if net.gateway6 is not None:
        lines.append(f"nameserver {net.gateway6}")
    return "\n".join([*lines, RESOLV_OPTIONS, ""])


def etc_dir(netns_path: str) -> str:
    return os.path.join(NETNS_ETC, os.path.basename(netns_path))


def resolver_pid(state_dir: str) -> int | None:
    """The pid of ``state_dir``'s running resolver (None: no pid file, or a dead or reused pid)."""
    try:
        with open(pid_path(state_dir)) as f:
            pid_s, start_s = f.read().split()
        pid, start = int(pid_s), int(start_s)
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid, start) else None


def resolver_alive(state_dir: str) -> bool:
    return resolver_pid(state_dir) is not None


class Dns(Protocol):
    def attach(self, sb: Sandbox, net: Network) -> None: ...
    def settle(self) -> None: ...
    def detach(self, sb: Sandbox) -> None: ...
    def changed(self) -> None: ...
    def reconcile(self, needed: bool) -> None: ...


class NoDns:
    """No resolver (unit tests with a fake host)."""

    def attach(self, sb: Sandbox, net: Network) -> None:
        pass

    def settle(self) -> None:
        pass

    def detach(self, sb: Sandbox) -> None:
        pass

    def changed(self) -> None:
        pass

    def reconcile(self, needed: bool) -> None:
        pass


def _warn(what: str, e: Exception) -> None:
    print(f"portwright: name resolution: {what}: {e}", file=sys.stderr)


class LiveDns:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self._pending: threading.Thread | None = None

    def attach(self, sb: Sandbox, net: Network) -> None:
        """Write the sandbox's resolv.conf, then start the resolver (or have it reload) in the
        background: starting one is a Python start-up, about half a second, which the rest of
        the sandbox's creation (addresses, ports) overlaps. ``settle`` waits for it, before CMD
        starts and asks."""
        if sb.netns is None:
            return
        try:
            d = etc_dir(sb.netns)
            os.makedirs(d, exist_ok=True)
            tmp = os.path.join(d, ".resolv.conf.tmp")
            with open(tmp, "w") as f:
                f.write(resolv_conf(net))
            os.rename(tmp, os.path.join(d, "resolv.conf"))
        except OSError as e:
            _warn(f"sandbox {sb.name}", e)
            return

        def start() -> None:
            try:
                self.ensure_running()
                self.ask("reload")
            except (OSError, PortwrightError) as e:
                _warn(f"sandbox {sb.name}", e)

        self.settle()  # one at a time
        self._pending = threading.Thread(target=start, name="pw-dns-start", daemon=True)
        self._pending.start()

    def settle(self) -> None:
        """Wait until the resolver that ``attach`` started (or asked to reload) answers."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.join()

    def detach(self, sb: Sandbox) -> None:
        if sb.netns is None:
            return
        d = etc_dir(sb.netns)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(d, "resolv.conf"))
        with contextlib.suppress(OSError):
            os.rmdir(d)  # only when empty: a user's own files there stay

    def changed(self) -> None:
        with contextlib.suppress(OSError):
            self.ask("reload")

    def ask(self, word: str) -> str:
        """Send one word on the control socket and wait for the resolver's answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(ASK_TIMEOUT)
            s.connect(ctl_path(self.state_dir))
            s.sendall(word.encode() + b"\n")
            return s.recv(64).decode().strip()

    def stats(self, reset: bool = False) -> dict[str, Any]:
        """What the resolver measured about itself (``dns/stats.py``); ``reset`` starts it over."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(ASK_TIMEOUT)
            s.connect(ctl_path(self.state_dir))
            s.sendall(b"stats-reset\n" if reset else b"stats\n")
            data = b""
            while not data.endswith(b"\n") and (chunk := s.recv(4096)):
                data += chunk
        out: dict[str, Any] = json.loads(data)
        return out

    def pid(self) -> int | None:
        """The running resolver's pid (None when none runs: no file, or a dead or reused pid)."""
        return resolver_pid(self.state_dir)

    def ensure_running(self) -> None:
        with contextlib.suppress(OSError):
            if self.ask("ping") == "ok":
                return
        os.makedirs(os.path.dirname(ctl_path(self.state_dir)), exist_ok=True)
        with open(os.path.join(self.state_dir, "ctl", "dns.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; the others find it running
            with contextlib.suppress(OSError):
                if self.ask("ping") == "ok":
                    return
            self._clear_stale()
            runner.spawn_detached(
                [sys.executable, "-I", "-m", "portwright.dns.server", self.state_dir],
                log_path=os.path.join(self.state_dir, "logs", "dns.log"),
                cwd="/",
                env={**os.environ, "PORTWRIGHT_STATE_DIR": self.state_dir},
                what="the resolver",
            )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    if self.ask("ping") == "ok":
                        return
                time.sleep(0.02)
        raise KernelError("starting the resolver", f"no answer on {ctl_path(self.state_dir)}")

    def _clear_stale(self) -> None:
        for path in (ctl_path(self.state_dir), pid_path(self.state_dir)):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def reconcile(self, needed: bool) -> None:
        """After a kill -9: start it again if sandboxes need it, else clear what it left."""
        sweep_resolv_confs()
        if self.pid() is not None:
            return
        if needed:
            try:
                self.ensure_running()
            except (OSError, PortwrightError) as e:
                _warn("restarting the resolver", e)
            return
        self._clear_stale()
        path = hosts.hosts_path(self.state_dir)
        if path:
            with contextlib.suppress(OSError):
                hosts.sweep(path, resolver_alive)  # ours, and any other dead resolver's block

    def stop(self) -> None:
        """Stop the resolver of this state directory (tests, uninstall); it clears its files."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)


def sweep_resolv_confs() -> list[str]:
    """Remove resolv.conf files we wrote for namespaces that no longer exist (a teardown that
    crashed between deleting the netns and the file). Only files carrying our mark, and only where
    /run/netns/NAME is gone, so another state directory's live sandbox is never touched."""
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(NETNS_ETC) if n.startswith("pw-")]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(NETNS_ETC, name, "resolv.conf")
        if os.path.exists(os.path.join(NETNS_RUN, name)):
            continue
        try:
            with open(path) as f:
                ours = f.readline().rstrip("\n") == MARK
        except OSError:
            continue
        if ours:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(path))
    return removed
