"""portwright on a host where a real dockerd runs (Debian's docker.io).

dockerd sets the iptables FORWARD policy to DROP and loads br_netfilter, so bridged and routed
traffic of every other bridge is dropped unless Docker's DOCKER-USER hook accepts it. These tests
start a private dockerd and check that portwright's networks and published ports keep working,
also for a network created before dockerd started, and that a port Docker holds is refused with
its owner named.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest
from dockerutil import Dockerd, dockerd_running, ensure_image
from pwutil import SERVERS, inspect, pw, tcp_ask, temp_network, uniq, wait_tcp

from conftest import External, sh

pytestmark = [pytest.mark.integration, pytest.mark.docker]


@pytest.fixture(scope="module")
def early_network() -> Iterator[str]:
    """A portwright network made before dockerd starts (dockerd's rules come after ours)."""
    with temp_network("--ipv6", prefix="early") as name:
        yield name


@pytest.fixture(scope="module")
def dockerd(early_network: str) -> Iterator[Dockerd]:
    # dockerd turns the FORWARD policy to DROP when it has to enable ip_forward itself, which is
    # what a fresh Docker host looks like: reproduce that worst case.
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("0")
    try:
        with dockerd_running() as d:
            if forward_policy() != "DROP":  # a dockerd that kept ACCEPT: impose Docker's usual DROP
                sh("iptables", "-P", "FORWARD", "DROP")
            yield d
    finally:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")


def forward_policy() -> str:
    out = sh("iptables", "-S", "FORWARD").stdout
    return out.splitlines()[0].split()[-1]


def test_bridge_networking_survives_forward_drop(dockerd: Dockerd, early_network: str, external: External) -> None:
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
            code = ("import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 3); "
                    "print('ok')")
            srv = sh("sh", "-c", "python3 -m http.server 8765 >/dev/null 2>&1 & echo $!", ns=external.ns).stdout.strip()
            try:
                wait_tcp(external.ns, "127.0.0.1", 8765)
                assert sh(sys.executable, "-c", code, str(external.addr4), "8765", ns=f"pw-{a}").stdout.strip() == "ok"
            finally:
                sh("kill", srv, check=False)
            ours = sh("iptables", "-S", "DOCKER-USER").stdout
            bridge = json.loads(pw("network", "inspect", network).stdout)[0]["Bridge"]
            assert bridge in ours and "portwright" in ours
    finally:
        for rec in json.loads(pw("ps", "-a", "--format", "json").stdout):
            if rec["NetworkSettings"]["Network"] in (early_network, later):
                pw("rm", "-f", rec["Name"], check=False)
        pw("network", "rm", later, check=False)
    # Removing a network removes its DOCKER-USER rules, and only its own.
    docker_user = sh("iptables", "-S", "DOCKER-USER").stdout
    assert json.loads(pw("network", "inspect", early_network).stdout)[0]["Bridge"] in docker_user
    assert later_bridge not in docker_user


@pytest.mark.parametrize("mode", ["nat", "proxy"])
def test_published_paths_with_dockerd(dockerd: Dockerd, early_network: str, external: External, mode: str) -> None:
    name = uniq(mode)
    pw("run", "-d", "--name", name, "--network", early_network, "--publish-mode", mode, "-p", "0.0.0.0::7000",
       "--", sys.executable, str(SERVERS / "peer_server.py"), "7000")
    try:
        port = inspect(name)["NetworkSettings"]["Ports"][0]["host_port"]
        wait_tcp(None, inspect(name)["NetworkSettings"]["IPAddress"], 7000)
        assert "PEER" in tcp_ask("127.0.0.1", port)
        code = ("import sys; sys.path.insert(0, sys.argv[3]); from pwutil import tcp_ask; "
                "print(tcp_ask(sys.argv[1], int(sys.argv[2])))")
        out = sh(sys.executable, "-c", code, str(external.host4), str(port), str(SERVERS.parent), ns=external.ns).stdout
        assert "PEER" in out
        if mode == "nat":
            assert f"PEER {external.addr4} " in out  # source address kept through FORWARD DROP
        hp = sh(sys.executable, "-c", code, str(external.host4), str(port), str(SERVERS.parent), ns=f"pw-{name}").stdout
        assert "PEER" in hp  # hairpin
    finally:
        pw("rm", "-f", name)


def test_port_held_by_docker_is_refused_with_owner(dockerd: Dockerd, early_network: str) -> None:
    image = ensure_image(dockerd)
    cid = dockerd.docker("run", "-d", "-p", "127.0.0.1::8080", image, "httpd", "-f", "-p", "8080").stdout.strip()
    port = dockerd.docker("port", cid, "8080/tcp").stdout.split(":")[-1].strip()
    r = pw("run", "-d", "--network", early_network, "-p", f"127.0.0.1:{port}:80", "--", "sleep", "5", check=False)
    assert r.returncode != 0 and "already in use" in r.stderr
    assert "docker-proxy" in r.stderr or "dockerd" in r.stderr
