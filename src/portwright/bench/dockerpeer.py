"""Docker's own machinery as benchmark peers, run standalone against a portwright sandbox.

Owns two peers:

* ``DockerProxy``: the real ``/usr/sbin/docker-proxy`` binary, one process per published port as
  dockerd runs it. dockerd hands it a pipe on fd 3 and waits for ``0\\n`` (ready) or an error
  text; we do the same, so a failure to bind is reported, not guessed. Given another binary
  with the same contract (``portwright-proxy``, the drop-in) it runs that instead, the dockerd
  way (``--userland-proxy-path``).
* ``DockerIptables``: the iptables rule shape dockerd 20.10 installs for ``userland-proxy: false``
  (DNAT in a DOCKER chain jumped to from PREROUTING/OUTPUT for local destinations, MASQUERADE for
  local sources and hairpin, the FORWARD accept chain), installed through ``iptables`` (which is
  iptables-nft on Debian 12) into chains with a private ``PWB`` prefix so that it never touches
  Docker's own chains. Everything it adds is removed again, in reverse order, on ``remove()``.

Neither needs dockerd; that keeps the comparison on the data path and off the daemon.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import time
from dataclasses import dataclass, field

from ..errors import KernelError, MissingTool
from .driver import Child, Done, run, spawn, tool_binary

DOCKER_PROXY = "/usr/sbin/docker-proxy"
#: portwright's docker-proxy drop-in: the tiny waiter and its shared relay (proxy/waiter.py,
#: built here for a relay directory of the bench's own), or where the waiter cannot be built, the
#: console script next to the interpreter (one Python process per port).
DROPIN = "portwright-proxy"
DROPIN_DIR = "/run/portwright/bench-proxy"


def dropin_binary() -> str:
    """The drop-in the bench runs: the waiter built for ``DROPIN_DIR`` (once per process), else
    the Python console script."""
    global _dropin
    if _dropin is None:
        from ..proxy import waiter

        out = os.path.join(DROPIN_DIR, "portwright-proxy")
        try:
            waiter.build(out, directory=os.path.join(DROPIN_DIR, "run"))
            _dropin = out
        except Exception:  # noqa: BLE001 - no gcc, not x86_64: the Python drop-in still works
            _dropin = tool_binary(DROPIN)
    return _dropin


_dropin: str | None = None


def dropin_relay_pids() -> list[int]:
    """The shared relay and its workers serving the bench's waiters (they count as its cost)."""
    from ..kernel.proc import argvs

    tag = os.path.join(DROPIN_DIR, "run").encode()
    return [pid for pid, argv in argvs() if b"portwright.proxy.shared" in argv and tag in argv]


READY_TIMEOUT_S = 10.0


def docker_proxy_available() -> str | None:
    """None when usable, else the one-line reason naming the package."""
    if not os.access(DOCKER_PROXY, os.X_OK):
        return f"{DOCKER_PROXY} not found; install it with: apt-get install docker.io"
    return None


def iptables_available() -> str | None:
    if shutil.which("iptables") is None:
        return "iptables not found; install it with: apt-get install iptables"
    return None


def dropin_available() -> str | None:
    """None when portwright's drop-in is installed, else the reason."""
    try:
        tool_binary(DROPIN)
    except MissingTool as e:
        return str(e)
    return None


def docker_proxy_command(
    host_ip: str,
    host_port: int,
    container_ip: str,
    container_port: int,
    proto: str = "tcp",
    binary: str = DOCKER_PROXY,
) -> list[str]:
    """The argv dockerd 20.10 uses for one published port (of ``binary``: docker-proxy or a
    drop-in)."""
    return [
        binary,
        "-proto",
        proto,
        "-host-ip",
        host_ip,
        "-host-port",
        str(host_port),
        "-container-ip",
        container_ip,
        "-container-port",
        str(container_port),
    ]


class DockerProxy:
    """A set of docker-proxy processes (one per port), started and stopped together. ``binary``
    may be any program with docker-proxy's contract (flags, readiness on fd 3): ``DROPIN`` means
    portwright's drop-in."""

    def __init__(self, binary: str = DOCKER_PROXY) -> None:
        self.binary = dropin_binary() if binary == DROPIN else binary
        self.name = "portwright-proxy" if binary == DROPIN else os.path.basename(binary)
        self.dropin = binary == DROPIN
        self.procs: list[Child] = []

    @property
    def pids(self) -> list[int]:
        """Every process the proxies cost: one per port, and for the drop-in its shared relay."""
        own = [p.pid for p in self.procs if p.running]
        return own + dropin_relay_pids() if self.dropin and own else own

    def start(
        self, host_ip: str, host_port: int, container_ip: str, container_port: int, proto: str = "tcp"
    ) -> None:
        if not os.access(self.binary, os.X_OK):
            raise MissingTool(self.binary, "docker.io")
        r, w = os.pipe()
        try:
            proc = spawn(
                docker_proxy_command(host_ip, host_port, container_ip, container_port, proto, self.binary),
                ready_fd=w,
                new_session=True,
            )
        except BaseException:
            os.close(r)
            os.close(w)
            raise
        os.close(w)
        self.procs.append(proc)
        try:
            msg = _read_ready(r, READY_TIMEOUT_S)
        finally:
            os.close(r)
        if msg != "0":
            raise KernelError(
                f"{self.name} on port {host_port}/{proto}", msg or "exited before reporting ready"
            )

    def stop(self) -> list[str]:
        errors: list[str] = []
        for p in self.procs:
            p.send(signal.SIGTERM)  # to all first: they stop in parallel
        deadline = time.monotonic() + 10
        for p in self.procs:
            if p.stop(timeout=max(0.1, deadline - time.monotonic())):
                errors.append(f"{self.name} pid {p.pid} ignored SIGTERM and was killed")
        self.procs.clear()
        return errors


def _read_ready(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        if b"\n" in buf:
            break
    return buf.decode(errors="replace").strip()


# ---- iptables: dockerd 20.10's userland-proxy=false shape ----------------------------------


@dataclass(frozen=True, slots=True)
class Forward:
    """One published TCP port: host_port -> container_ip:container_port."""

    host_port: int
    container_ip: str
    container_port: int


@dataclass
class IptablesShape:
    """The rules as (table, argv-after-table) lists; pure, so it can be checked without root."""

    chains: list[tuple[str, str]] = field(default_factory=list)  # (table, chain) we create
    rules: list[tuple[str, list[str]]] = field(default_factory=list)  # in install order


def docker_shape(prefix: str, bridge: str, subnet: str, forwards: list[Forward]) -> IptablesShape:
    """dockerd 20.10's nat+filter rules for one bridge, with our chain names.

    ``prefix`` replaces Docker's chain names (DOCKER -> {prefix}, DOCKER-USER -> {prefix}-U, ...)
    so that nothing here collides with a running dockerd.
    """
    dn, du, i1, i2 = prefix, f"{prefix}-U", f"{prefix}-I1", f"{prefix}-I2"
    s = IptablesShape()
    s.chains = [("nat", dn), ("filter", dn), ("filter", du), ("filter", i1), ("filter", i2)]
    s.rules += [("nat", r.split()) for r in _docker_nat(dn, bridge, subnet, forwards)]
    s.rules += [("filter", r.split()) for r in _docker_filter(dn, du, i1, i2, bridge, forwards)]
    return s


def _docker_nat(dn: str, bridge: str, subnet: str, forwards: list[Forward]) -> list[str]:
    rules = [
        f"-A PREROUTING -m addrtype --dst-type LOCAL -j {dn}",
        f"-A OUTPUT -m addrtype --dst-type LOCAL -j {dn}",
        f"-A POSTROUTING -o {bridge} -m addrtype --src-type LOCAL -j MASQUERADE",
        f"-A POSTROUTING -s {subnet} ! -o {bridge} -j MASQUERADE",
    ]
    rules += [
        f"-A POSTROUTING -s {f.container_ip}/32 -d {f.container_ip}/32 -p tcp -m tcp "
        f"--dport {f.container_port} -j MASQUERADE"
        for f in forwards
    ]
    rules += [
        f"-A {dn} -p tcp -m tcp --dport {f.host_port} -j DNAT --to-destination {f.container_ip}:{f.container_port}"
        for f in forwards
    ]
    return rules


def _docker_filter(dn: str, du: str, i1: str, i2: str, bridge: str, forwards: list[Forward]) -> list[str]:
    rules = [
        f"-A {du} -j RETURN",
        f"-A {i1} -i {bridge} ! -o {bridge} -j {i2}",
        f"-A {i1} -j RETURN",
        f"-A {i2} -o {bridge} -j DROP",
        f"-A {i2} -j RETURN",
    ]
    rules += [
        f"-A {dn} -d {f.container_ip}/32 ! -i {bridge} -o {bridge} -p tcp -m tcp --dport {f.container_port} -j ACCEPT"
        for f in forwards
    ]
    rules += [
        f"-A FORWARD -j {du}",
        f"-A FORWARD -j {i1}",
        f"-A FORWARD -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A FORWARD -o {bridge} -j {dn}",
        f"-A FORWARD -i {bridge} ! -o {bridge} -j ACCEPT",
        f"-A FORWARD -i {bridge} -o {bridge} -j ACCEPT",
    ]
    return rules


def restore_text(shape: IptablesShape) -> str:
    """The shape as one ``iptables-restore --noflush`` transaction (both tables)."""
    out: list[str] = []
    for table in ("nat", "filter"):
        out.append(f"*{table}")
        out.extend(f":{c} - [0:0]" for t, c in shape.chains if t == table)
        out.extend(" ".join(args) for t, args in shape.rules if t == table)
        out.append("COMMIT")
    return "\n".join(out) + "\n"


class DockerIptables:
    """Installs a docker_shape() atomically and removes exactly what it installed."""

    def __init__(self, shape: IptablesShape, bridge: str) -> None:
        self.shape = shape
        self.bridge = bridge
        self.installed = False
        self._old_localnet: str | None = None

    def install(self) -> None:
        if shutil.which("iptables-restore") is None:
            raise MissingTool("iptables-restore", "iptables")
        # dockerd sets route_localnet on its bridge so that 127.0.0.1:P can be DNATed out of it.
        path = f"/proc/sys/net/ipv4/conf/{self.bridge}/route_localnet"
        try:
            with open(path, encoding="ascii") as f:
                self._old_localnet = f.read().strip()
            with open(path, "w", encoding="ascii") as f:
                f.write("1")
        except OSError as e:
            raise KernelError(f"setting {path}", str(e), e.errno) from e
        p = run(["iptables-restore", "-w", "--noflush"], input=restore_text(self.shape), timeout=300)
        if not p.ok:
            self._restore_localnet()
            raise KernelError("iptables-restore (Docker's rule shape)", p.stderr or p.stdout)
        self.installed = True

    def remove(self) -> list[str]:
        errors: list[str] = []
        if self.installed:
            # Delete the jumps and rules in built-in chains one by one, then flush/delete ours.
            lines: list[str] = []
            own = {c for _, c in self.shape.chains}
            for table in ("nat", "filter"):
                lines.append(f"*{table}")
                for t, args in reversed(self.shape.rules):
                    if t == table and args[1] not in own:
                        lines.append(" ".join(["-D", *args[1:]]))
                lines.extend(f"-F {c}" for t, c in self.shape.chains if t == table)
                lines.extend(f"-X {c}" for t, c in self.shape.chains if t == table)
                lines.append("COMMIT")
            p = run(["iptables-restore", "-w", "--noflush"], input="\n".join(lines) + "\n", timeout=300)
            if not p.ok:
                # Someone changed the tables under us (a rule or chain is already gone): remove
                # whatever is still there piece by piece, and only report what stays behind.
                errors.append(
                    "Docker's rule shape was changed from outside while it was installed "
                    f"({(p.stderr or p.stdout).strip().splitlines()[0]})"
                )
                errors.extend(self._remove_piecewise(own))
            self.installed = False
        errors.extend(self._restore_localnet())
        return errors

    def _remove_piecewise(self, own: set[str]) -> list[str]:
        def ipt(table: str, *args: str) -> Done:
            return run(["iptables", "-w", "-t", table, *args], timeout=60)

        for t, args in reversed(self.shape.rules):
            if args[1] not in own:
                ipt(t, "-D", *args[1:])  # absent already: nothing to do
        left: list[str] = []
        for t, c in self.shape.chains:
            if ipt(t, "-n", "-L", c).returncode != 0:
                continue  # chain gone already
            ipt(t, "-F", c)
            r = ipt(t, "-X", c)
            if r.returncode != 0:
                left.append(
                    f"could not delete iptables chain {t}/{c}: {r.stderr.strip()}; "
                    f"remove it with: iptables -t {t} -F {c}; iptables -t {t} -X {c}"
                )
        return left

    def _restore_localnet(self) -> list[str]:
        if self._old_localnet is None:
            return []
        try:
            with open(f"/proc/sys/net/ipv4/conf/{self.bridge}/route_localnet", "w", encoding="ascii") as f:
                f.write(self._old_localnet)
        except OSError as e:
            if os.path.exists(f"/sys/class/net/{self.bridge}"):
                return [f"restoring route_localnet on {self.bridge}: {e}"]
        self._old_localnet = None
        return []
