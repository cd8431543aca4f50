"""who / ports / audit on a real Docker host: dockerd (Debian docker.io) with userland-proxy on and
off, a busybox image built with ``docker import``, containers published with -p on all interfaces,
on 127.0.0.1, and on the host network.

dockerd is started once per configuration on a private socket, data root and exec root, and is
stopped (with its containerd) afterwards; the iptables chains it created are removed. Where
dockerd cannot start the tests skip with the reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from conftest import sh
from portwright.diagnose import audit as audit_mod
from portwright.diagnose.nsenter import netns_path_for
from portwright.diagnose.snapshot import APPLICATION, DOCKER_PROXY, DOCKERD_PLACEHOLDER, collect
from portwright.diagnose.who import who

pytestmark = [pytest.mark.integration, pytest.mark.docker]

IMAGE = "pwt-busybox:diag"
BIP = "198.19.0.1/24"
DOCKER_CHAINS = {"nat": ["DOCKER"], "filter": ["DOCKER", "DOCKER-USER", "DOCKER-ISOLATION-STAGE-1",
                                               "DOCKER-ISOLATION-STAGE-2"]}


@dataclass
class Dockerd:
    sock: str

    def docker(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh("docker", "-H", f"unix://{self.sock}", *args, check=check, timeout=timeout)


def _iptables_snapshot() -> str:
    return sh("iptables-save", check=False).stdout


def _cleanup_iptables(before: str) -> None:
    """Remove the rules and chains dockerd added (only those that were not there before)."""
    if ":DOCKER " in before:
        return  # another dockerd owned them before us; leave them
    for rule in (["-t", "nat", "-D", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
                 ["-t", "nat", "-D", "OUTPUT", "!", "-d", "127.0.0.0/8", "-m", "addrtype", "--dst-type", "LOCAL",
                  "-j", "DOCKER"],
                 ["-t", "nat", "-D", "OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
                 ["-t", "nat", "-D", "POSTROUTING", "-s", "198.19.0.0/24", "!", "-o", "docker0", "-j", "MASQUERADE"],
                 ["-t", "nat", "-D", "POSTROUTING", "-o", "docker0", "-m", "addrtype", "--src-type", "LOCAL",
                  "-j", "MASQUERADE"],
                 ["-D", "FORWARD", "-j", "DOCKER-USER"], ["-D", "FORWARD", "-j", "DOCKER-ISOLATION-STAGE-1"],
                 ["-D", "FORWARD", "-o", "docker0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                  "-j", "ACCEPT"],
                 ["-D", "FORWARD", "-o", "docker0", "-j", "DOCKER"],
                 ["-D", "FORWARD", "-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT"],
                 ["-D", "FORWARD", "-i", "docker0", "-o", "docker0", "-j", "ACCEPT"]):
        while sh("iptables", *rule, check=False).returncode == 0:
            pass
    for table, chains in DOCKER_CHAINS.items():
        for c in chains:
            sh("iptables", "-t", table, "-F", c, check=False)
        for c in chains:
            sh("iptables", "-t", table, "-X", c, check=False)
    if "-P FORWARD DROP" not in before and ":FORWARD DROP" not in before:
        sh("iptables", "-P", "FORWARD", "ACCEPT", check=False)


def _pids(name: str) -> set[int]:
    p = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    return {int(x) for x in p.stdout.split()}


@pytest.fixture(scope="module", params=[True, False], ids=["userland-proxy", "no-userland-proxy"])
def dockerd(request: pytest.FixtureRequest) -> Iterator[Dockerd]:
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd not installed (apt-get install docker.io)")
    if _pids("dockerd"):
        pytest.skip("another dockerd is running here; docker0 and its iptables chains cannot be shared")
    root = tempfile.mkdtemp(prefix="pwt-dockerd-")
    sock = f"{root}/docker.sock"
    before = _iptables_snapshot()
    containerd_before = _pids("containerd")
    log = open(f"{root}/dockerd.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        ["dockerd", "--storage-driver=vfs", "--bip", BIP, "-H", f"unix://{sock}",
         "--data-root", f"{root}/data", "--exec-root", f"{root}/exec", "--pidfile", f"{root}/dockerd.pid",
         f"--userland-proxy={'true' if request.param else 'false'}", "--ip6tables=false"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    d = Dockerd(sock)
    try:
        deadline = time.time() + 40
        while time.time() < deadline:
            if proc.poll() is not None:
                break
            if os.path.exists(sock) and d.docker("info", check=False, timeout=10).returncode == 0:
                break
            time.sleep(0.3)
        else:
            pytest.skip(f"dockerd did not come up within 40 s (log: {root}/dockerd.log)")
        if proc.poll() is not None:
            with open(f"{root}/dockerd.log") as f:
                tail = f.read()[-300:]
            pytest.skip(f"dockerd cannot start here: {tail.strip().splitlines()[-1] if tail.strip() else '?'}")
        bb = tempfile.mkdtemp(prefix="pwt-bb-", dir=root)
        os.makedirs(f"{bb}/bin")
        shutil.copy("/bin/busybox", f"{bb}/bin/busybox")
        for tool in ("sh", "httpd", "nc", "sleep"):
            os.symlink("busybox", f"{bb}/bin/{tool}")
        tar = subprocess.run(["tar", "-C", bb, "-c", "."], capture_output=True, check=True).stdout
        subprocess.run(["docker", "-H", f"unix://{sock}", "import", "-", IMAGE], input=tar, check=True,
                       capture_output=True, timeout=60)
        yield d
    finally:
        try:
            ids = d.docker("ps", "-aq", check=False, timeout=20).stdout.split()
            if ids:
                d.docker("rm", "-f", *ids, check=False, timeout=60)
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in _pids("containerd") - containerd_before:  # the containerd that dockerd started
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        log.close()
        if not _pids("dockerd"):  # another engineer's dockerd may have started meanwhile: leave its state
            _cleanup_iptables(before)
            sh("ip", "link", "del", "docker0", check=False)
        sh("umount", "-R", f"{root}/exec", check=False)
        sh("umount", "-R", f"{root}/data", check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def docker_env(dockerd: Dockerd, monkeypatch: pytest.MonkeyPatch) -> Dockerd:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{dockerd.sock}")
    return dockerd


def run_web(d: Dockerd, *publish: str, network: str | None = None, port: int = 8000) -> str:
    name = f"pwt-web-{secrets.token_hex(3)}"
    args = ["run", "-d", "--name", name, *(a for p in publish for a in ("-p", p))]
    if network:
        args += ["--network", network]
    d.docker(*args, IMAGE, "/bin/httpd", "-f", "-p", str(port))
    return name


def wait_http(url: str, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if subprocess.run(["curl", "-s", "-m", "1", "-o", "/dev/null", url]).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer")


def test_docker_publications(docker_env: Dockerd, request: pytest.FixtureRequest) -> None:
    userland = "no-userland" not in request.node.callspec.id
    d = docker_env
    name = run_web(d, "29000:8000", "127.0.0.1:29001:8000")
    wait_http("http://127.0.0.1:29000/")
    snap = collect()
    assert snap.docker.available, snap.notes
    cont = snap.docker.find(name)
    assert cont is not None and cont.pid

    rep = who(snap, 29000)
    p4 = next(p for p in rep.paths if p.label == "127.0.0.1")
    assert p4.target is not None and p4.target.kind == "container" and p4.target.name == name
    assert p4.target.network == "bridge"
    (iln, ih), = p4.inner.listeners  # type: ignore[union-attr]
    assert ih.comm in ("httpd", "busybox") and iln.port == 8000
    kinds = {h.kind for _, h in rep.holders}
    if userland:
        assert DOCKER_PROXY in kinds
        dp = next(h for _, h in rep.holders if h.kind == DOCKER_PROXY)
        assert dp.container == name and dp.proxy_to is not None and dp.proxy_to[1] == 8000
        assert p4.via == "socket"  # OUTPUT skips 127.0.0.0/8 with the proxy on: docker-proxy serves it
    else:
        assert kinds == {DOCKERD_PLACEHOLDER}
        assert p4.via == "dnat" and "DOCKER" in " ".join(p4.trace)

    findings = audit_mod.audit(snap).findings
    mine = {(f.severity, f.code, f.subject) for f in findings if name in f.owner}
    assert ("medium", "exposed", "tcp 0.0.0.0:29000") in mine
    leak = [f for f in findings if f.code == "loopback-leak" and ":29001" in f.subject]
    guard = any(t == ("inet", "portwright") for t in snap.ruleset.tables) and any(
        c.name == "guard" for c in snap.ruleset.chains.values() if c.table == "portwright")
    if guard:
        assert not leak  # portwright's guard chain drops 127/8 from other interfaces for Docker too
    else:
        assert leak and leak[0].severity == "high"

    # netns_path_for(container=...) is what `portwright exec --container NAME` enters
    assert netns_path_for(container=name) == f"/proc/{cont.pid}/ns/net"


def test_docker_host_network_undeclared_port(docker_env: Dockerd, request: pytest.FixtureRequest) -> None:
    d = docker_env
    hostnet = run_web(d, network="host", port=29010)
    wait_http("http://127.0.0.1:29010/")
    snap = collect()
    rep = who(snap, 29010)
    (_, h), = [(ln, h) for ln, h in rep.holders if str(ln.ip) in ("0.0.0.0", "::")][:1]
    assert h.kind == APPLICATION and h.container == hostnet
    und = [f for f in audit_mod.audit(snap).findings if f.code == "undeclared" and hostnet in f.owner]
    assert und and "29010" in und[0].subject
