"""A real, private dockerd for integration tests, and a tiny image built without pulling.

``dockerd_running(*extra_args)`` starts Debian's dockerd with vfs storage, ``--bip 198.19.0.1/24``
and everything private under a temp dir (data-root, exec-root, pidfile, API socket, config file),
waits until it answers, and yields a ``Dockerd`` handle whose ``docker(*args)`` runs the CLI
against it. On exit it removes every container, stops dockerd and the containerd it started
(and any shim left), unmounts what remains under the temp dir, deletes docker0 if dockerd created
it, and removes the iptables chains and FORWARD policy change it made (when iptables was on).

Only one test dockerd runs at a time on a machine: a file lock serialises them, because two would
fight over docker0 and 198.19.0.0/24. Where dockerd cannot start (no binary, no cgroups, a
container without the needed privileges) the test is skipped with dockerd's own error.

``ensure_image(d)`` builds ``pwtest/busybox`` with ``docker import`` from the busybox-static
binary (nothing can be pulled). Containers that need real tools bind-mount ``HOST_TOOLS_MOUNTS``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

DOCKERD = "/usr/sbin/dockerd"
BIP = "198.19.0.1/24"
IMAGE = "pwtest/busybox"
LOCK_PATH = "/run/lock/portwright-test-dockerd.lock"
#: Read-only host directories for containers that run host binaries (iperf3, curl, python3).
HOST_TOOLS_MOUNTS = ("-v", "/usr:/usr:ro", "-v", "/lib:/lib:ro", "-v", "/lib64:/lib64:ro", "--tmpfs", "/tmp")
_TABLES = ("filter", "nat")


@dataclass
class Dockerd:
    """A running private dockerd."""

    root: str
    sock: str
    pid: int
    log_path: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.sock}"}

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            ["docker", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            input=input if not isinstance(input, bytes) else None,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def children(self) -> list[tuple[int, list[str]]]:
        """(pid, argv) of dockerd's direct children (docker-proxy processes among them)."""
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid != self.pid:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = [a.decode() for a in f.read().split(b"\0") if a]
            except (OSError, ValueError, IndexError):
                continue
            out.append((int(entry), argv))
        return out


def _iptables_listing(cmd: str, prefixes: tuple[str, ...]) -> dict[str, list[str]]:
    """``cmd -t TABLE -S`` lines starting with one of prefixes, per table ({} without cmd)."""
    out: dict[str, list[str]] = {}
    if shutil.which(cmd) is None:
        return out
    for table in _TABLES:
        r = subprocess.run([cmd, "-t", table, "-S"], capture_output=True, text=True)
        out[table] = [ln for ln in r.stdout.splitlines() if ln.startswith(prefixes)]
    return out


def _iptables_chains(cmd: str) -> dict[str, set[str]]:
    return {t: {ln.split()[1] for ln in lines} for t, lines in _iptables_listing(cmd, ("-N", "-P")).items()}


def _iptables_rules(cmd: str) -> dict[str, set[str]]:
    """Every ``-A`` rule line, per table (to remove what dockerd appended to built-in chains)."""
    return {t: set(lines) for t, lines in _iptables_listing(cmd, ("-A ",)).items()}


def _forward_policy(cmd: str) -> str | None:
    if shutil.which(cmd) is None:
        return None
    r = subprocess.run([cmd, "-t", "filter", "-S", "FORWARD"], capture_output=True, text=True)
    for ln in r.stdout.splitlines():
        if ln.startswith("-P FORWARD"):
            return ln.split()[2]
    return None


def _remove_new_chains(
    cmd: str, before: dict[str, set[str]], policy: str | None, rules_before: dict[str, set[str]] | None = None
) -> None:
    after = _iptables_chains(cmd)
    # Rules dockerd appended to chains that existed before it (FORWARD, POSTROUTING: docker0's
    # accept and masquerade rules) go first; the chains it created go below.
    for table, old in (rules_before or {}).items():
        now = subprocess.run([cmd, "-t", table, "-S"], capture_output=True, text=True).stdout
        for ln in now.splitlines():
            parts = ln.split()
            if ln.startswith("-A ") and ln not in old and parts[1] in before.get(table, set()):
                subprocess.run([cmd, "-t", table, "-D", *parts[1:]], capture_output=True)
    for table, chains in after.items():
        new = chains - before.get(table, set())
        if not new:
            continue
        # first the jumps into the new chains (from any chain), then the chains themselves
        rules = subprocess.run([cmd, "-t", table, "-S"], capture_output=True, text=True).stdout
        for ln in rules.splitlines():
            parts = ln.split()
            if (
                parts[:1] == ["-A"]
                and any(f"-j {c}" in ln or f"-g {c}" in ln for c in new)
                and parts[1] not in new
            ):
                subprocess.run([cmd, "-t", table, "-D", *parts[1:]], capture_output=True)
        for c in new:
            subprocess.run([cmd, "-t", table, "-F", c], capture_output=True)
        for c in new:
            subprocess.run([cmd, "-t", table, "-X", c], capture_output=True)
    if policy is not None and _forward_policy(cmd) != policy:
        subprocess.run([cmd, "-t", "filter", "-P", "FORWARD", policy], capture_output=True)


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _kill_and_wait(pids: list[int], timeout: float = 15) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _unmount_under(path: str) -> None:
    with open("/proc/self/mounts") as f:
        points = [ln.split()[1] for ln in f if ln.split()[1].startswith(path)]
    for mp in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


@contextlib.contextmanager
def _machine_lock(timeout: float = 600) -> Iterator[None]:
    os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"another test dockerd held {LOCK_PATH} for {timeout:.0f} s")
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def dockerd_running(*extra_args: str, iptables: bool = True, ready_timeout: float = 60) -> Iterator[Dockerd]:
    """Start a private dockerd (skips the test where that is impossible) and always clean up."""
    if shutil.which("docker") is None or not os.path.exists(DOCKERD):
        pytest.skip("dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root")
    with _machine_lock():
        root = tempfile.mkdtemp(prefix="pwt-dockerd-", dir="/var/tmp")
        sock = os.path.join(root, "docker.sock")
        log_path = os.path.join(root, "dockerd.log")
        with open(os.path.join(root, "daemon.json"), "w") as f:
            f.write("{}\n")
        had_docker0 = _link_exists("docker0")
        ipt_before = {c: _iptables_chains(c) for c in ("iptables", "ip6tables")}
        policy_before = {c: _forward_policy(c) for c in ("iptables", "ip6tables")}
        rules_before = {c: _iptables_rules(c) for c in ("iptables", "ip6tables")}
        args = [
            DOCKERD,
            "--storage-driver=vfs",
            f"--bip={BIP}",
            f"--data-root={root}/data",
            f"--exec-root={root}/exec",
            f"--pidfile={root}/docker.pid",
            f"--config-file={root}/daemon.json",
            "-H",
            f"unix://{sock}",
            f"--iptables={'true' if iptables else 'false'}",
            *extra_args,
        ]
        logf = open(log_path, "wb")
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        d = Dockerd(root=root, sock=sock, pid=proc.pid, log_path=log_path)
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if proc.poll() is not None:
                    tail = d.log().strip().splitlines()[-3:]
                    pytest.skip(f"dockerd cannot start here (exit {proc.returncode}): {' | '.join(tail)}")
                r = subprocess.run(
                    ["docker", "version", "--format", "{{.Server.Version}}"],
                    capture_output=True,
                    text=True,
                    env=d.env,
                    timeout=30,
                )
                if r.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    pytest.skip(f"dockerd did not answer within {ready_timeout:.0f} s: {r.stderr.strip()}")
                time.sleep(0.3)
            yield d
        finally:
            with contextlib.suppress(Exception):
                ids = d.docker("ps", "-aq", check=False, timeout=30).stdout.split()
                if ids:
                    d.docker("rm", "-f", *ids, check=False, timeout=60)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            logf.close()
            # containerd (started by dockerd), shims and proxies that still name our directory
            _kill_and_wait(_pids_mentioning(root))
            _unmount_under(root)
            if not had_docker0 and _link_exists("docker0"):
                subprocess.run(["ip", "link", "del", "docker0"], capture_output=True)
            if iptables:
                for c in ("iptables", "ip6tables"):
                    _remove_new_chains(c, ipt_before[c], policy_before[c], rules_before[c])
            shutil.rmtree(root, ignore_errors=True)


def ensure_image(d: Dockerd, name: str = IMAGE) -> str:
    """Build ``pwtest/busybox`` from the static busybox binary with ``docker import``."""
    if d.docker("image", "inspect", name, check=False).returncode == 0:
        return name
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed (apt-get install busybox-static)")
    if "statically linked" not in subprocess.run(
        ["file", "-L", busybox], capture_output=True, text=True
    ).stdout and shutil.which("file"):
        pytest.skip(f"{busybox} is not static (apt-get install busybox-static)")
    with tempfile.TemporaryDirectory(prefix="pwt-rootfs-") as rootfs:
        for sub in ("bin", "etc", "tmp", "www", "proc", "sys", "dev"):
            os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
        shutil.copy2(busybox, os.path.join(rootfs, "bin", "busybox"))
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True).stdout.split()
        for a in applets:
            with contextlib.suppress(FileExistsError):
                os.symlink("busybox", os.path.join(rootfs, "bin", a))
        with open(os.path.join(rootfs, "etc", "passwd"), "w") as f:
            f.write("root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        with open(os.path.join(rootfs, "etc", "group"), "w") as f:
            f.write("root:x:0:\nnogroup:x:65534:\n")
        with open(os.path.join(rootfs, "www", "index.html"), "w") as f:
            f.write("hello from pwtest/busybox\n")
        tar = subprocess.run(["tar", "-C", rootfs, "-c", "."], capture_output=True, check=True).stdout
        r = subprocess.run(
            ["docker", "import", "-c", 'CMD ["/bin/sh"]', "-", name],
            input=tar,
            capture_output=True,
            env=d.env,
            timeout=120,
        )
        if r.returncode != 0:
            raise AssertionError(f"docker import failed: {r.stderr.decode(errors='replace').strip()}")
    return name
