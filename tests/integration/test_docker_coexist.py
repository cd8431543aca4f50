"""portwright on a host where a real dockerd runs (Debian's docker.io).

dockerd sets the iptables FORWARD policy to DROP and loads br_netfilter, so bridged and routed
traffic of every other bridge is dropped unless Docker's DOCKER-USER hook accepts it. These tests
start a private dockerd and check that portwright's networks keep working, also for a network
created before dockerd started, and that a port Docker holds is refused with its owner named.
(Every published path is checked under dockerd too: test_publish.py runs its whole suite twice.)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest
from dockerutil import Dockerd, ensure_image
from pwutil import dockerd_with_forward_drop, inspect, ps_json, pw, temp_network, uniq, wait_tcp

from conftest import External, sh

pytestmark = [pytest.mark.integration, pytest.mark.docker]


@pytest.fixture(scope="module")
def early_network() -> Iterator[str]:
    """A portwright network made before dockerd starts (dockerd's rules come after ours)."""
    with temp_network("--ipv6", prefix="early") as name:
        yield name


@pytest.fixture(scope="module")
def dockerd(early_network: str) -> Iterator[Dockerd]:
    with dockerd_with_forward_drop() as d:
        yield d


def forward_policy() -> str:
    out = sh("iptables", "-S", "FORWARD").stdout
    return out.splitlines()[0].split()[-1]


def test_bridge_networking_survives_forward_drop(
    dockerd: Dockerd, early_network: str, external: External
) -> None:
    assert forward_policy() == "DROP"
    pw("ps")  # any command re-syncs DOCKER-USER for networks made before dockerd
    later = uniq("late")
    pw("network", "create", later)
    later_bridge = json.loads(pw("network", "inspect", later).stdout)[0]["Bridge"]
    try:
        for network in (early_network, later):
            a, b = uniq("a"), uniq("b")
            pw("run", "-d", "--name", a, "--network", network, "--", "sleep", "60")
            pw("run", "-d", "--name", b, "--network", network, "--", "python3", "-m", "http.server", "8000")
            ip_b = inspect(b)["NetworkSettings"]["IPAddress"]
            wait_tcp(f"pw-{a}", ip_b, 8000)  # sandbox to sandbox, across br_netfilter + FORWARD DROP
            # Egress: a sandbox reaches another machine through the host (routed, masqueraded).
            code = (
                "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 3); "
                "print('ok')"
            )
            srv = sh(
                "sh", "-c", "python3 -m http.server 8765 >/dev/null 2>&1 & echo $!", ns=external.ns
            ).stdout.strip()
            try:
                wait_tcp(external.ns, "127.0.0.1", 8765)
                assert (
                    sh(sys.executable, "-c", code, str(external.addr4), "8765", ns=f"pw-{a}").stdout.strip()
                    == "ok"
                )
            finally:
                sh("kill", srv, check=False)
            ours = sh("iptables", "-S", "DOCKER-USER").stdout
            bridge = json.loads(pw("network", "inspect", network).stdout)[0]["Bridge"]
            assert bridge in ours and "portwright" in ours
    finally:
        for rec in ps_json("-a"):
            if rec["Networks"] in (early_network, later):
                pw("rm", "-f", rec["Names"], check=False)
        pw("network", "rm", later, check=False)
    # Removing a network removes its DOCKER-USER rules, and only its own.
    docker_user = sh("iptables", "-S", "DOCKER-USER").stdout
    assert json.loads(pw("network", "inspect", early_network).stdout)[0]["Bridge"] in docker_user
    assert later_bridge not in docker_user


def test_port_held_by_docker_is_refused_with_owner(dockerd: Dockerd, early_network: str) -> None:
    image = ensure_image(dockerd)
    cid = dockerd.docker(
        "run", "-d", "-p", "127.0.0.1::8080", image, "httpd", "-f", "-p", "8080"
    ).stdout.strip()
    port = dockerd.docker("port", cid, "8080/tcp").stdout.split(":")[-1].strip()
    r = pw(
        "run", "-d", "--network", early_network, "-p", f"127.0.0.1:{port}:80", "--", "sleep", "5", check=False
    )
    assert r.returncode != 0 and "already in use" in r.stderr
    assert "docker-proxy" in r.stderr or "dockerd" in r.stderr
