"""who / ports / audit on a real Docker host: dockerd (Debian docker.io) with userland-proxy on and
off, a busybox image built with ``docker import``, containers published with -p on all interfaces,
on 127.0.0.1, and on the host network.

dockerd is started once per configuration through tests/integration/dockerutil.py (private socket,
data root and exec root; stopped with its containerd afterwards; its iptables chains removed).
Where dockerd cannot start the tests skip with dockerd's reason.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest
from dockerutil import IMAGE, Dockerd, dockerd_running, ensure_image

from portwright.diagnose import audit as audit_mod
from portwright.diagnose.nsenter import netns_path_for
from portwright.diagnose.snapshot import APPLICATION, DOCKER_PROXY, DOCKERD_PLACEHOLDER, collect
from portwright.diagnose.who import who

pytestmark = [pytest.mark.integration, pytest.mark.docker]


@pytest.fixture(scope="module", params=[True, False], ids=["userland-proxy", "no-userland-proxy"])
def dockerd(request: pytest.FixtureRequest) -> Iterator[Dockerd]:
    """One private dockerd per configuration (dockerutil: locked, cleaned up, skips where impossible)."""
    with dockerd_running(f"--userland-proxy={'true' if request.param else 'false'}") as d:
        ensure_image(d)
        yield d


@pytest.fixture
def docker_env(dockerd: Dockerd, monkeypatch: pytest.MonkeyPatch) -> Dockerd:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{dockerd.sock}")
    return dockerd


def run_web(d: Dockerd, *publish: str, network: str | None = None, port: int = 8000) -> str:
    name = f"pwt-web-{secrets.token_hex(3)}"
    args = ["run", "-d", "--name", name, *(a for p in publish for a in ("-p", p))]
    if network:
        args += ["--network", network]
    d.docker(*args, IMAGE, "/bin/httpd", "-f", "-p", str(port), "-h", "/www")
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
    ((iln, ih),) = p4.inner.listeners  # type: ignore[union-attr]
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
        c.name == "guard" for c in snap.ruleset.chains.values() if c.table == "portwright"
    )
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
    ((_, h),) = [(ln, h) for ln, h in rep.holders if str(ln.ip) in ("0.0.0.0", "::")][:1]
    assert h.kind == APPLICATION and h.container == hostnet
    und = [f for f in audit_mod.audit(snap).findings if f.code == "undeclared" and hostnet in f.owner]
    assert und and "29010" in und[0].subject
