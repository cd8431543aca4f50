"""A throwaway network namespace that plays "the host", so tests can do what a real host's admin
does to its firewall (``nft flush ruleset``, ufw, firewalld, iptables policies) without touching
the machine's own firewall or other tests' rules.

portwright runs inside it for real (``ip netns exec``): its bridges, its ``inet portwright`` table,
its sysctls and its relays live in that namespace; sandboxes are ordinary ``pw-*`` namespaces
joined to its bridge. ``ip netns exec`` also binds ``/etc/netns/<name>/*`` over ``/etc``, which is
where a test puts private firewall configuration. ``external()`` adds a client namespace routed to
the host namespace, as another machine on its LAN (addresses from the benchmarking ranges).

Guard: every command refuses to run if the namespace turned out to be the init namespace (or the
test's own).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pwstate

ROOT = Path(__file__).resolve().parents[2]


def _ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:  # /proc/1/ns/net is unreadable in some containers, even to root
        return None


@dataclass
class HostNS:
    """One fake host: ``name`` is its netns, ``state`` its private portwright state directory."""

    name: str
    state: str
    etc: Path
    _externals: list[str] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)  # sandboxes run here: their /run/netns files go
    _mnt_pid: int = 0  # firewalld's holder: its mount namespace has the private /run/dbus

    def _guard(self) -> None:
        mine = _ns_inode(f"/run/netns/{self.name}")
        if mine is None or mine in (_ns_inode("/proc/1/ns/net"), _ns_inode("/proc/self/ns/net")):
            raise RuntimeError(f"netns {self.name} is the init namespace: refusing to touch the real host")

    def run(
        self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the host namespace (with its private /etc overlay; inside the private
        mount namespace of ``firewalld()`` while it runs, so the command sees its D-Bus)."""
        self._guard()
        env = dict(os.environ, PORTWRIGHT_STATE_DIR=self.state)
        enter = ["nsenter", "-t", str(self._mnt_pid), "-m", "--"] if self._mnt_pid else []
        p = subprocess.run(
            [*enter, "ip", "netns", "exec", self.name, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            input=input,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"[{self.name}] {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def pw(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The real portwright CLI, run inside the host namespace with the private state dir."""
        if "--name" in args[:-1]:
            self._names.add(args[args.index("--name") + 1])
        return self.run(sys.executable, "-m", "portwright", *args, check=check, timeout=timeout)

    def external(self, idx: int = 1) -> tuple[str, str, str]:
        """A client namespace routed to this host over a veth: returns (netns, its IPv4, host's IPv4).
        Addresses: 198.19.250.0/24 and 2001:2:fffe::/64 (benchmarking ranges)."""
        self._guard()
        ns = f"{self.name}-x{idx}"
        veth = f"{self.name[-6:]}x{idx}"
        host4, addr4 = f"198.19.250.{4 * idx + 1}", f"198.19.250.{4 * idx + 2}"
        host6, addr6 = f"2001:2:fffe:{idx}::1", f"2001:2:fffe:{idx}::2"
        sh = _sh
        sh("ip", "netns", "add", ns)
        self._externals.append(ns)
        sh("ip", "-n", self.name, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", self.name, "addr", "add", f"{host4}/30", "dev", veth)
        sh("ip", "-n", self.name, "-6", "addr", "add", f"{host6}/64", "dev", veth, "nodad")
        sh("ip", "-n", self.name, "link", "set", veth, "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr4}/30", "dev", "eth0")
        sh("ip", "-n", ns, "-6", "addr", "add", f"{addr6}/64", "dev", "eth0", "nodad")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", host4)
        sh("ip", "-n", ns, "-6", "route", "add", "default", "via", host6)
        return ns, addr4, host4

    def ufw(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ufw in this namespace, on a private copy of its configuration (made on first use):
        /etc/ufw and /etc/default/ufw under /etc/netns/<name>/, an empty sysctl file (ufw would
        otherwise write sysctls) and no extra kernel modules. ufw only edits iptables-nft rules of
        the namespace it runs in; its lock file (/run/ufw.lock) is the only thing outside it."""
        if not (self.etc / "ufw").exists():
            shutil.copytree("/etc/ufw", self.etc / "ufw")
            (self.etc / "ufw" / "sysctl.conf").write_text("")
            (self.etc / "default").mkdir(exist_ok=True)
            shutil.copy("/etc/default/ufw", self.etc / "default" / "ufw")
        return self.run("ufw", *args, check=check)

    @contextlib.contextmanager
    def firewalld(self, conf: dict[str, str] | None = None) -> Iterator[None]:
        """firewalld running in this namespace on a private system bus: a mount namespace of its
        own gets tmpfs on /run/dbus and /run/firewalld, its own dbus-daemon, and /etc/firewalld
        from /etc/netns/<name>/firewalld (``conf`` overrides firewalld.conf keys). Every ``run``
        enters that mount namespace meanwhile. Stopped (bus and daemon) on exit."""
        self._guard()
        if not (self.etc / "firewalld").exists():
            shutil.copytree("/etc/firewalld", self.etc / "firewalld")
        cfg = self.etc / "firewalld" / "firewalld.conf"
        for k, v in (conf or {}).items():
            lines = [ln for ln in cfg.read_text().splitlines() if not ln.startswith(f"{k}=")]
            cfg.write_text("\n".join([*lines, f"{k}={v}"]) + "\n")
        log = Path(self.state) / "firewalld.log"
        script = (
            "mount -t tmpfs pw-dbus /run/dbus 2>/dev/null || { mkdir -p /run/dbus; mount -t tmpfs pw-dbus /run/dbus; }; "
            "mkdir -p /run/firewalld && mount -t tmpfs pw-fwd /run/firewalld; "
            "dbus-daemon --system --fork; "
            f"exec /usr/bin/python3 /usr/sbin/firewalld --nofork --nopid --log-target file --log-file {log}"
        )
        holder = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.name,
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._mnt_pid = holder.pid
            deadline = time.monotonic() + 30
            while self.run("firewall-cmd", "--state", check=False).returncode != 0:
                if holder.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"firewalld did not start in {self.name}: {log.read_text()[-500:] if log.exists() else ''}"
                    )
                time.sleep(0.3)
            yield
        finally:
            # The bus daemon forked away from the holder: it is found by the mount namespace it shares.
            mnt = os.readlink(f"/proc/{holder.pid}/ns/mnt") if holder.poll() is None else None
            holder.kill()
            holder.wait()
            for pid in _sh("ip", "netns", "pids", self.name, check=False).stdout.split():
                with contextlib.suppress(OSError):
                    if mnt is not None and os.readlink(f"/proc/{pid}/ns/mnt") == mnt:
                        os.kill(int(pid), 9)
            self._mnt_pid = 0


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=60)


def _teardown(h: HostNS) -> None:
    """Remove every sandbox, relay and namespace the test made, whatever state it left."""
    with contextlib.suppress(Exception):
        out = h.pw("ps", "-a", "--format", "json", check=False, timeout=60).stdout
        names = [r.get("Names") or r["Name"] for r in _json_records(out)]
        for n in names:
            h.pw("rm", "-f", n, check=False, timeout=60)
        for n in names:
            _sh("ip", "netns", "del", f"pw-{n}", check=False)
    # Whatever still runs in the namespace (supervisors, relays, a fork server, daemons) goes.
    pids = _sh("ip", "netns", "pids", h.name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    subprocess.run(["pkill", "-9", "-f", f"pw-zygote.*{h.state}"], capture_output=True)
    # A sandbox's /run/netns/pw-NAME bind mount is made inside 'ip netns exec''s private mount
    # namespace, so 'ip netns del' from any other one cannot unmount it and leaves the empty file
    # behind: remove the files of this host's own sandboxes (never a mounted, live one).
    for n in h._names:
        path = f"/run/netns/pw-{n}"
        if os.path.exists(path) and not os.path.ismount(path):
            with contextlib.suppress(OSError):
                os.unlink(path)
    for ns in h._externals:
        _sh("ip", "netns", "del", ns, check=False)
    _sh("ip", "netns", "del", h.name, check=False)
    shutil.rmtree(h.etc, ignore_errors=True)
    # bpffs and the cgroup root are the machine's, not the namespace's: its ebpf links go too.
    pwstate.discard(h.state)


def _json_records(out: str) -> list[dict[str, object]]:
    """``ps --format json`` output as records: a JSON array, or one object per line."""
    out = out.strip()
    if not out:
        return []
    if out.startswith("["):
        return list(json.loads(out))
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@contextlib.contextmanager
def host_namespace(prefix: str = "pwh") -> Iterator[HostNS]:
    """A fresh fake host with loopback up and forwarding on; removed with everything in it."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    _sh("ip", "netns", "add", name)
    etc = Path("/etc/netns") / name
    etc.mkdir(parents=True, exist_ok=True)
    h = HostNS(name=name, state=pwstate.private_state_dir(f"{name}-", "/run"), etc=etc)
    try:
        h._guard()
        h.run("ip", "link", "set", "lo", "up")
        h.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        yield h
    finally:
        _teardown(h)
