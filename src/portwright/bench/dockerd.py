"""A private dockerd for the bench, and the busybox image its containers run (nothing is pulled).

Owns starting Debian's dockerd with everything under one temp directory (data-root, exec-root,
pidfile, API socket, config), ``vfs`` storage, ``--bip 198.19.0.1/24``, and, because the machine
may be shared, without touching the host's firewall or sysctls (``--iptables=false
--ip-forward=false --ip-masq=false``: a published port then goes through docker-proxy, which
dockerd starts by default anyway). The Docker CLI is ``/usr/bin/docker`` with ``DOCKER_HOST``
set to our socket; never another ``docker`` on PATH. ``ensure_image`` builds ``pwbench/busybox``
with ``docker import`` from the busybox-static binary.

Only one such dockerd runs per machine: the integration tests' lock file serialises them (two
would fight over docker0 and 198.19.0.0/24). ``stop`` is idempotent and removes everything
``start`` made, also after a failed or interrupted start: the containers, dockerd, the containerd
it started and any shim left, mounts under the temp directory, docker0 if dockerd created it, and
the directory. ``unavailable`` says in one line why Docker cannot be measured here.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable

from ..errors import KernelError
from ..kernel.proc import argvs
from .driver import Child, Done, run, spawn, wait_until

DOCKERD = "/usr/sbin/dockerd"
DOCKER_CLI = "/usr/bin/docker"
BIP = "198.19.0.1/24"
IMAGE = "pwbench/busybox"
#: Shared with tests/integration/dockerutil.py: one private dockerd at a time on a machine.
LOCK_PATH = "/run/lock/portwright-test-dockerd.lock"
LOCK_WAIT_S = 120.0
READY_TIMEOUT_S = 60.0


def unavailable() -> str | None:
    """None when a private dockerd can be started here, else the one-line reason."""
    for path, pkg in (
        (DOCKERD, "docker.io"),
        (DOCKER_CLI, "docker.io"),
        ("/usr/bin/containerd", "containerd"),
    ):
        if not os.access(path, os.X_OK):
            return f"{path} not found; install it with: apt-get install {pkg}"
    if _static_busybox() is None:
        return "no static busybox for the containers' image; install it with: apt-get install busybox-static"
    return None


def _static_busybox() -> str | None:
    path = shutil.which("busybox")
    if path is None:
        return None
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    # A dynamically linked ELF names its interpreter (PT_INTERP: /lib64/ld-linux...).
    return None if b"/ld-linux" in head or b"ld-musl" in head else path


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (this process excluded)."""
    needle = text.encode()
    return [pid for pid, args in argvs() if pid != os.getpid() and needle in b"\0".join(args)]


class PrivateDockerd:
    """One dockerd of our own; ``docker(*args)`` runs /usr/bin/docker against it."""

    def __init__(self, log: Callable[[str], None] = lambda s: None, extra_args: tuple[str, ...] = ()) -> None:
        self.log = log
        self.extra_args = extra_args  # more dockerd flags (say --userland-proxy-path, proxydropin.py)
        self.root: str | None = None
        self.proc: Child | None = None
        self._lock_fd: int | None = None
        self._had_docker0 = os.path.exists("/sys/class/net/docker0")

    @property
    def sock(self) -> str:
        assert self.root is not None
        return os.path.join(self.root, "docker.sock")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def docker(self, *args: str, timeout: float = 120) -> Done:
        return run(
            [DOCKER_CLI, *args], timeout=timeout, env={**os.environ, "DOCKER_HOST": f"unix://{self.sock}"}
        )

    def _take_lock(self) -> None:
        os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._lock_fd = fd

        def locked() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        if not locked():
            self.log(f"waiting for another private dockerd to finish ({LOCK_PATH})")
            if not wait_until(locked, LOCK_WAIT_S, every=0.5):
                raise KernelError(
                    "starting dockerd",
                    f"another private dockerd held {LOCK_PATH} for "
                    f"{LOCK_WAIT_S:.0f} s; try again when it is done",
                )

    def start(self) -> None:
        self._take_lock()
        if os.path.exists("/sys/class/net/docker0") and not self._had_docker0:
            self._had_docker0 = True
        if self._had_docker0:
            raise KernelError(
                "starting dockerd",
                "docker0 exists (another dockerd runs here); stop it or measure without Docker",
            )
        self.root = tempfile.mkdtemp(prefix="pwb-dockerd-", dir="/var/tmp")
        with open(os.path.join(self.root, "daemon.json"), "w", encoding="ascii") as f:
            f.write("{}\n")
        r = self.root
        self.proc = spawn(
            [
                DOCKERD,
                "--storage-driver=vfs",
                f"--bip={BIP}",
                f"--data-root={r}/data",
                f"--exec-root={r}/exec",
                f"--pidfile={r}/docker.pid",
                f"--config-file={r}/daemon.json",
                "-H",
                f"unix://{self.sock}",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                *self.extra_args,
            ],
            log_path=os.path.join(r, "dockerd.log"),
            new_session=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise KernelError("starting dockerd", f"it exited ({self.proc.poll()}): {self._log_tail()}")
            d = self.docker("version", "--format", "{{.Server.Version}}", timeout=30)
            if d.ok:
                self.log(f"dockerd {d.stdout.strip()} is up (pid {self.proc.pid})")
                return
            if time.monotonic() > deadline:
                raise KernelError("starting dockerd", f"no answer within {READY_TIMEOUT_S:.0f} s: {d.why()}")
            time.sleep(0.3)

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.root or "", "dockerd.log"), encoding="utf-8", errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            return "no log"

    def ensure_image(self) -> str:
        """``pwbench/busybox``: the static busybox and its applets, imported as an image."""
        if self.docker("image", "inspect", IMAGE).ok:
            return IMAGE
        busybox = _static_busybox()
        if busybox is None:
            raise KernelError(
                "building the busybox image", "no static busybox (apt-get install busybox-static)"
            )
        with tempfile.TemporaryDirectory(prefix="pwb-rootfs-") as tmp:
            rootfs = os.path.join(tmp, "rootfs")
            for sub in ("bin", "etc", "tmp", "proc", "sys", "dev"):
                os.makedirs(os.path.join(rootfs, sub))
            shutil.copy2(busybox, os.path.join(rootfs, "bin", "busybox"))
            for applet in ("sh", "sleep"):
                os.symlink("busybox", os.path.join(rootfs, "bin", applet))
            with open(os.path.join(rootfs, "etc", "passwd"), "w", encoding="ascii") as f:
                f.write("root:x:0:0:root:/:/bin/sh\n")
            tar = os.path.join(tmp, "rootfs.tar")
            p = run(["tar", "-C", rootfs, "-cf", tar, "."], timeout=60)
            if not p.ok:
                raise KernelError("tar of the busybox rootfs", p.why())
            p = self.docker("import", "-c", 'CMD ["/bin/sh"]', tar, IMAGE, timeout=120)
            if not p.ok:
                raise KernelError("docker import", p.why())
        return IMAGE

    def stop(self) -> list[str]:
        """Remove everything ``start`` made (idempotent); the errors of what could not be removed."""
        errors: list[str] = []
        if self.proc is not None and self.proc.running:
            ids = self.docker("ps", "-aq", timeout=30).stdout.split()
            if ids:
                d = self.docker("rm", "-f", *ids, timeout=300)
                if not d.ok:
                    errors.append(f"docker rm -f: {d.why()}")
            if self.proc.stop(timeout=30):
                errors.append("dockerd ignored SIGTERM for 30 s and was killed")
        self.proc = None
        if self.root is not None:
            _kill_all(pids_mentioning(self.root))  # containerd (started by dockerd), shims, proxies
            _unmount_under(self.root)
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        if not self._had_docker0 and os.path.exists("/sys/class/net/docker0"):
            d = run(["ip", "link", "del", "docker0"], timeout=30)
            if not d.ok:
                errors.append(f"ip link del docker0: {d.why()}")
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        return errors


def _kill_all(pids: list[int], timeout: float = 15) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), timeout)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _unmount_under(path: str) -> None:
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        points = [ln.split()[1] for ln in f if ln.split()[1].startswith(path)]
    for mp in sorted(points, key=len, reverse=True):
        run(["umount", "-l", mp], timeout=30)
