"""who / ports / audit against real situations: a host program, portwright sandboxes in nat, proxy
and host modes, a v4-only and a 127.0.0.1 publication, a stale rule left by a killed supervisor,
and Docker's 127.0.0.1 DNAT leak rebuilt in throwaway namespaces (with and without the fix).

Each answer is checked against the kernel: the named inner listener is the process we started,
and every "reachable"/"not reachable" claim is confirmed with real traffic.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from pwutil import free_port, pw, uniq, wait_tcp

import pwstate
from conftest import sh
from portwright.diagnose import audit as audit_mod
from portwright.diagnose.nsenter import listeners_in, netns_path_for
from portwright.diagnose.snapshot import APPLICATION, PW_PROXY, PW_RESERVATION, collect
from portwright.diagnose.who import who
from portwright.errors import NotFound
from portwright.kernel.sockets import Listener
from portwright.state import State
from portwright.zygote import pid_path as zygote_pid_path
from portwright.zygote import stop_server

pytestmark = pytest.mark.integration


def wait_inner(netns: str, port: int, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(ln.port == port for ln in listeners_in(netns, ("tcp",))):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listened on {port} inside {netns}")


@pytest.fixture
def sandboxes() -> Iterator[list[str]]:
    names: list[str] = []
    try:
        yield names
    finally:
        for n in names:
            pw("rm", "-f", n, check=False)


def run_sandbox(names: list[str], *args: str, inner_port: int = 8080) -> str:
    name = uniq("pwtd")
    names.append(name)
    pw(
        "run",
        "-d",
        "--name",
        name,
        *args,
        "--",
        sys.executable,
        "-m",
        "http.server",
        str(inner_port),
        "--bind",
        "0.0.0.0",
    )
    rec = State().sandbox(name)
    if rec.sandbox.netns:
        wait_inner(rec.sandbox.netns, inner_port)
    return name


def path(rep: object, label: str) -> object:
    return next(p for p in rep.paths if p.label == label)  # type: ignore[attr-defined]


def curl_ok(url: str) -> bool:
    return (
        subprocess.run(["curl", "-sf", "-m", "3", "-o", "/dev/null", url], capture_output=True).returncode
        == 0
    )


# ---------------------------------------------------------------- host program
def test_who_host_program_and_bad_input() -> None:
    port = free_port()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen()
    try:
        rep = who(collect(), port)
        ((ln, h),) = rep.holders
        assert h.kind == APPLICATION and h.pid == os.getpid() and str(ln.ip) == "127.0.0.1"
        assert path(rep, "127.0.0.1").holder.pid == os.getpid()  # type: ignore[attr-defined]
        assert path(rep, "[::1]").via == "nothing"  # type: ignore[attr-defined]
        assert any("[::1]" in d for d in rep.differences)
        out = json.loads(pw("who", str(port), "--json").stdout)
        assert out["holders"][0]["pid"] == os.getpid() and out["owned"]
    finally:
        srv.close()
    nobody = json.loads(pw("who", str(port), "--json").stdout)
    assert not nobody["owned"] and nobody["summary"].startswith("nothing")
    for bad, word in (("70000", "1-65535"), ("80/icmp", "icmp")):
        r = pw("who", bad, check=False)
        assert r.returncode == 2 and word in r.stderr and r.stderr.count("\n") == 1


# ---------------------------------------------------------------- portwright sandboxes
def test_nat_sandbox_dual_v4only_and_loopback(sandboxes: list[str], external: object) -> None:
    dual, v4, loop = free_port(), free_port(), free_port()
    name = run_sandbox(
        sandboxes,
        "-p",
        f"{dual}:8080",
        "-p",
        f"0.0.0.0:{v4}:8080",
        "-p",
        f"127.0.0.1:{loop}:8080",
        "--publish-mode",
        "nat",
    )
    snap = collect()
    rep = who(snap, dual)
    kinds = {h.kind for _, h in rep.holders}
    assert PW_PROXY in kinds and kinds <= {PW_RESERVATION, PW_PROXY}  # [::] is relayed, v4 is DNAT
    assert all(h.sandbox == name for _, h in rep.holders)
    for label in ("127.0.0.1", "[::1]"):
        p = path(rep, label)
        assert p.target.kind == "sandbox" and p.target.name == name  # type: ignore[attr-defined]
        ((iln, ih),) = p.inner.listeners  # type: ignore[attr-defined]
        assert ih.comm.startswith("python") and iln.port == 8080
    assert path(rep, "127.0.0.1").via == "dnat" and path(rep, "[::1]").via == "socket"  # type: ignore[attr-defined]
    # Loopback clients agree (the [::1] relay goes to the IPv4 address). IPv6 clients from other
    # machines are DNATed to the sandbox's IPv6 address, where this v4-only server does not
    # listen: reported, no longer silent (issue 17).
    assert not [d for d in rep.differences if "127.0.0.1" in d]
    assert all("from other machines" in d and "nothing listens" in d for d in rep.differences)
    assert curl_ok(f"http://127.0.0.1:{dual}/") and curl_ok(f"http://[::1]:{dual}/")

    # v4 only: [::1] is refused, and audit says so
    rep4 = who(snap, v4)
    assert path(rep4, "127.0.0.1").target.name == name  # type: ignore[attr-defined]
    assert path(rep4, "[::1]").via == "nothing" and rep4.differences  # type: ignore[attr-defined]
    assert not curl_ok(f"http://[::1]:{v4}/")

    rep_a = audit_mod.audit(snap)
    mine = {(f.severity, f.code, f.subject) for f in rep_a.findings if f.owner == f"sandbox {name}"}
    assert ("medium", "exposed", f"tcp 0.0.0.0:{dual}") in mine
    assert ("low", "family-mismatch", f"tcp [::1]:{v4}") in mine
    # 127.0.0.1 publication without the leak: portwright's guard drops 127/8 from other interfaces
    assert not any(c == "loopback-leak" and f":{loop}" in s for _, c, s in mine)
    ext = external  # another machine that routes 127.0.0.1 to this host
    ext.run("ip", "link", "set", "lo", "down")  # type: ignore[attr-defined]
    ext.run("sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1")  # type: ignore[attr-defined]
    ext.run("ip", "route", "add", "127.0.0.1/32", "via", str(ext.host4), "dev", "eth0")  # type: ignore[attr-defined]
    r = ext.run("curl", "-sf", "-m", "2", "-o", "/dev/null", f"http://127.0.0.1:{loop}/", check=False)  # type: ignore[attr-defined]
    assert r.returncode != 0
    assert curl_ok(f"http://127.0.0.1:{loop}/")

    rows = json.loads(pw("ports", "--published", "--json").stdout)["ports"]
    assert any(r["port"] == dual and r["owner"] == name and r["mechanism"] == "nat" for r in rows)


def test_proxy_sandbox(sandboxes: list[str]) -> None:
    port = free_port()
    name = run_sandbox(sandboxes, "-p", f"{port}:8080", "--publish-mode", "proxy")
    rep = who(collect(), port)
    assert rep.holders and all(h.kind == PW_PROXY and h.sandbox == name for _, h in rep.holders)
    p = path(rep, "127.0.0.1")
    assert p.via == "socket" and p.target.name == name  # type: ignore[attr-defined]
    assert p.inner.listeners[0][1].comm.startswith("python")  # type: ignore[attr-defined]
    assert curl_ok(f"http://127.0.0.1:{port}/")


def test_host_network_sandbox_undeclared_port(sandboxes: list[str]) -> None:
    port = free_port()
    name = run_sandbox(sandboxes, "--network", "host", inner_port=port)
    wait_tcp(None, "127.0.0.1", port)
    snap = collect()
    rep = who(snap, port)
    ((_, h),) = [(ln, h) for ln, h in rep.holders if ln.port == port]
    assert h.kind == APPLICATION and h.sandbox == name and h.comm.startswith("python")
    findings = [
        f for f in audit_mod.audit(snap).findings if f.code == "undeclared" and f.owner == f"sandbox {name}"
    ]
    assert [f.subject for f in findings] == [f"tcp 0.0.0.0:{port}"]


def test_stale_rule_left_by_killed_supervisor(sandboxes: list[str]) -> None:
    port = free_port()
    name = run_sandbox(sandboxes, "-p", f"{port}:8080", "--publish-mode", "nat")
    rec = State().sandbox(name)
    assert rec.supervisor_pid
    # The fork server would reap the killed supervisor and tear down within milliseconds; stop it
    # first so that the leftover stays for diagnose to find (as after a crash of both).
    stop_server(State().dir)
    deadline = time.time() + 5
    while time.time() < deadline and os.path.exists(zygote_pid_path(State().dir)):
        time.sleep(0.05)
    os.kill(rec.supervisor_pid, signal.SIGKILL)
    deadline = time.time() + 5
    while time.time() < deadline and os.path.exists(f"/proc/{rec.supervisor_pid}/stat"):
        with open(f"/proc/{rec.supervisor_pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    snap = collect()  # library call: the CLI would reconcile (and clean) first
    rep = audit_mod.audit(snap)
    got = {(f.severity, f.code, f.subject) for f in rep.findings}
    assert ("high", "stale", f"sandbox {name}") in got
    assert ("high", "stale", f"tcp 0.0.0.0:{port}") in got
    p = path(who(snap, port), "127.0.0.1")
    assert p.via == "dnat" and p.owner_tag == f"pw:{rec.id}"  # type: ignore[attr-defined]
    # The CLI: audit does not reconcile first, reports the leftover and exits non-zero (a CI gate).
    r = pw("audit", "--json", check=False)
    assert r.returncode == 10, r.stderr
    findings = json.loads(r.stdout)["findings"]
    assert any(
        f["code"] == "stale" and f["severity"] == "high" and f["subject"] == f"sandbox {name}"
        for f in findings
    )
    pw("prune", "-f")  # reconcile: the leftovers go, and so does the finding
    r = pw("audit", "--json", check=False)
    assert not any(
        f["subject"] in (f"sandbox {name}", f"tcp 0.0.0.0:{port}") for f in json.loads(r.stdout)["findings"]
    )


def test_netns_path_for_pid_reads_that_namespace() -> None:
    ns = f"pwt-e{secrets.token_hex(3)}"
    sh("ip", "netns", "add", ns)
    code = "import socket,time; s=socket.socket(); s.bind(('127.0.0.1', 4444)); s.listen(); time.sleep(30)"
    child = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code])
    try:
        path_ = netns_path_for(pid=child.pid)
        assert path_ == f"/proc/{child.pid}/ns/net"
        deadline = time.time() + 10
        found: list[Listener] = []
        while time.time() < deadline and not found:
            found = [ln for ln in listeners_in(path_, ("tcp",)) if ln.port == 4444]
            time.sleep(0.05)
        assert found and found[0].processes[0].pid == child.pid  # as nsenter -t PID -n ss -ntlp shows
        # The CLI: portwright exec --pid runs a command in that namespace.
        out = pw("exec", "--pid", str(child.pid), "--", "ss", "-Htln").stdout
        assert "127.0.0.1:4444" in out
        assert not any(
            ln.port == 4444
            and str(ln.ip) == "127.0.0.1"
            and ln.processes
            and ln.processes[0].pid == child.pid
            for ln in collect().listeners
        )  # not the host's
        with pytest.raises(NotFound):
            netns_path_for(pid=2**22 + 12345)
        with pytest.raises(NotFound):
            netns_path_for(container="pwt-no-such-container")
    finally:
        child.kill()
        child.wait()
        sh("ip", "netns", "del", ns, check=False)


# ---------------------------------------------------------------- Docker's 127.0.0.1 leak, rebuilt
@pytest.fixture
def leaky_host() -> Iterator[dict[str, str]]:
    """H (a host with Docker's 127.0.0.1 DNAT rule shape), B (the container), X (a neighbour)."""
    t = secrets.token_hex(2)
    h, x, b = f"pwt-h{t}", f"pwt-x{t}", f"pwt-b{t}"
    xv, bv = f"pwtxh{t}", f"pwtbh{t}"
    try:
        for ns in (h, x, b):
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", xv, "type", "veth", "peer", "name", "eth0", "netns", x)
        sh("ip", "link", "set", xv, "netns", h)
        sh("ip", "link", "add", bv, "type", "veth", "peer", "name", "eth0", "netns", b)
        sh("ip", "link", "set", bv, "netns", h)
        for cmd in (
            ["addr", "add", "198.19.252.1/30", "dev", xv],
            ["link", "set", xv, "up"],
            ["link", "set", "lo", "up"],
            ["addr", "add", "198.19.253.1/30", "dev", bv],
            ["link", "set", bv, "up"],
        ):
            sh("ip", "-n", h, *cmd)
        for cmd in (["addr", "add", "198.19.252.2/30", "dev", "eth0"], ["link", "set", "eth0", "up"]):
            sh("ip", "-n", x, *cmd)
        for cmd in (
            ["addr", "add", "198.19.253.2/30", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["link", "set", "lo", "up"],
            ["route", "add", "default", "via", "198.19.253.1"],
        ):
            sh("ip", "-n", b, *cmd)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=h)
        sh("sysctl", "-qw", f"net.ipv4.conf.{bv}.route_localnet=1", ns=h)  # as dockerd sets on docker0
        # X routes 127.0.0.1 to H (its own lo is down, so nothing local shadows the route)
        sh("sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1", ns=x)
        sh("ip", "-n", x, "route", "add", "127.0.0.1/32", "via", "198.19.252.1", "dev", "eth0")
        for rule in (
            ["-t", "nat", "-N", "DOCKER"],
            ["-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
            [
                "-t",
                "nat",
                "-A",
                "DOCKER",
                "-d",
                "127.0.0.1/32",
                "!",
                "-i",
                bv,
                "-p",
                "tcp",
                "-m",
                "tcp",
                "--dport",
                "6380",
                "-j",
                "DNAT",
                "--to-destination",
                "198.19.253.2:6379",
            ],
        ):
            sh("iptables", *rule, ns=h)
        yield {"h": h, "x": x, "b": b}
    finally:
        for ns in (h, x, b):
            sh("ip", "netns", "del", ns, check=False)


AUDIT_IN_NS = (
    "import json; from portwright.diagnose.snapshot import collect; from portwright.diagnose.audit import audit;"
    "print(json.dumps(audit(collect()).to_json()))"
)


def audit_in(ns: str) -> list[dict[str, object]]:
    state = pwstate.private_state_dir("pwt-diag-")
    env = {**os.environ, "PORTWRIGHT_STATE_DIR": state, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    try:
        p = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", AUDIT_IN_NS],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        pwstate.discard(state)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["findings"]  # type: ignore[no-any-return]


def reached(ns: dict[str, str]) -> bool:
    srv = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns["b"],
            "sh",
            "-c",
            "echo from-backend | timeout 4 nc -l -p 6379 -s 198.19.253.2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        r = sh("timeout", "3", "nc", "-w", "2", "127.0.0.1", "6380", ns=ns["x"], check=False, input="")
        return "from-backend" in r.stdout
    finally:
        srv.kill()
        srv.wait()


def test_loopback_leak_found_then_fixed(leaky_host: dict[str, str]) -> None:
    leaks = [f for f in audit_in(leaky_host["h"]) if f["code"] == "loopback-leak"]
    assert [(f["severity"], f["subject"]) for f in leaks] == [("high", "tcp 127.0.0.1:6380")]
    assert reached(leaky_host)  # the finding is true: the neighbour got the backend's answer
    fix = str(leaks[0]["fix"])
    rule = fix.split(": ", 1)[1].split()
    assert rule[0] == "iptables"
    sh(*rule, ns=leaky_host["h"])  # apply the fix exactly as printed
    assert not [f for f in audit_in(leaky_host["h"]) if f["code"] == "loopback-leak"]
    assert not reached(leaky_host)
