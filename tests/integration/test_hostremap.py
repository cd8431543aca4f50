"""host-remap (issue 12): ``run --network host -p HOST:INNER`` against the real kernel. CMD shares
the host's network namespace and its bind() is rewritten by BPF programs on its own cgroup; the
tests drive the real CLI, real servers (python3 -m http.server and servers/remap_app.py) and real
clients (curl, nc), and check that nothing (cgroup, bpffs pins, ports) is left afterwards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pwutil import SERVERS, curl, port_is_free, pw, tcp_ask, uniq, wait_tcp

from conftest import External, sh

pytestmark = pytest.mark.integration

CGROUP_PARENT = "portwright"


def _cgroup_dir(sid: str) -> str:
    from portwright.kernel import cgroup

    path = cgroup.sandbox_path(sid)
    assert path is not None
    return path


def _pins(sid: str) -> str:
    from portwright.publish.hostremap import pin_path

    return pin_path(f"pw:{sid}")


def inspect(name: str) -> dict[str, Any]:
    """``inspect NAME`` as one object (an array of one, as Docker prints, or the object itself)."""
    doc = json.loads(pw("inspect", name).stdout)
    return doc[0] if isinstance(doc, list) else doc  # type: ignore[no-any-return]


def _listening(port: int, proto: str = "tcp") -> list[str]:
    flag = "-Htln" if proto == "tcp" else "-Huln"
    return [ln for ln in sh("ss", flag, f"sport = :{port}").stdout.splitlines() if ln.strip()]


def _assert_gone(sid: str, *ports: int) -> None:
    assert not os.path.exists(_cgroup_dir(sid)), "the sandbox's cgroup is left"
    assert not os.path.exists(_pins(sid)), "BPF link pins are left"
    for p in ports:  # (TIME_WAIT of served connections may remain: no listener, no bound UDP)
        assert _listening(p) == [] and _listening(p, "udp") == [], f"port {p} is still held"


@pytest.fixture
def names() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for n in made:
        pw("rm", "-f", n, check=False)


def _ports(n: int) -> list[int]:
    """n distinct free ports below the ephemeral range (confinement applies to them)."""
    out: list[int] = []
    candidate = 20000 + (os.getpid() * 37) % 8000
    while len(out) < n:
        candidate += 1
        if port_is_free(candidate):
            out.append(candidate)
    return out


def _app_result(name: str, timeout: float = 10) -> dict[str, object]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = pw("logs", name, check=False).stdout.strip()
        if out:
            return json.loads(out.splitlines()[0])  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"{name} printed nothing: {pw('logs', name, check=False).stderr}")


def test_two_servers_on_one_inner_port_side_by_side(names: list[str], external: External) -> None:
    inner, h1, h2 = _ports(3)
    for host in (h1, h2):
        name = uniq("hr")
        names.append(name)
        pw(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "-p",
            f"{host}:{inner}",
            "--",
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "::",
            str(inner),
        )  # fmt: skip (dual-stack: bind6)
    for host in (h1, h2):
        wait_tcp(None, "127.0.0.1", host)
        assert "Directory listing" in curl(f"http://127.0.0.1:{host}/")
        assert "Directory listing" in curl(f"http://[::1]:{host}/")
        assert "Directory listing" in curl(f"http://{external.host4}:{host}/", ns=external.ns)
    assert _listening(inner) == [], "nothing may listen on the inner port"
    assert len(_listening(h1)) == 1 and len(_listening(h2)) == 1
    who = pw("who", str(h1)).stdout
    info = inspect(names[0])
    assert info["PublishMode"] == "host-remap"
    assert f"bound as :{inner}/tcp, remapped at bind() to 0.0.0.0:{h1}" in info["HostRemap"]["Remapped"]
    assert (
        f"sandbox {names[0]} (CMD pid {info['State']['Pid']}): bound as :{inner}, remapped at bind()" in who
    )
    assert f"0.0.0.0:{h1}->{inner}/tcp" in pw("ps").stdout
    assert f"{inner}/tcp -> 0.0.0.0:{h1}" in pw("port", names[0]).stdout
    sids = [inspect(n)["Id"] for n in names]
    pw("rm", "-f", *names)
    for sid in sids:
        _assert_gone(sid, inner, h1, h2)


def test_the_app_sees_its_own_ports_and_is_confined(names: list[str], external: External) -> None:
    inner, inner_udp, undeclared, exposed, host, host_udp = _ports(6)
    name = uniq("hr")
    names.append(name)
    pw("run", "-d", "--name", name, "--network", "host",
       "-p", f"127.0.0.1:{host}:{inner}", "-p", f"{host_udp}:{inner_udp}/udp", "--expose", str(exposed),
       "--", sys.executable, str(SERVERS / "remap_app.py"),
       str(inner), str(inner_udp), str(undeclared), str(exposed))  # fmt: skip
    seen = _app_result(name)
    assert seen == {
        "getsockname": inner,  # the app's own getsockname says the inner port
        "self_reach": True,  # it reaches itself through 127.0.0.1:INNER
        "self_peer": inner,
        "self_peer6": ["::1", inner],  # [::1]:INNER reaches the IPv4-only mapping, shown as asked
        "undeclared": "EPERM",  # confinement
        "exposed": exposed,  # --expose: allowed, unmapped
        "udp_sockname": inner_udp,
        "udp_self": ["ping", inner_udp],  # UDP to itself, the reply seen from the inner port
    }
    assert tcp_ask("127.0.0.1", host) == f"inner {inner}\n"
    assert _listening(inner) == [] and _listening(inner_udp, "udp") == []
    assert [ln.split()[3] for ln in _listening(host)] == [f"127.0.0.1:{host}"]
    # the 127.0.0.1-only mapping is not reachable from another namespace; the wildcard UDP one is
    r = external.run("nc", "-z", "-w", "2", str(external.host4), str(host), check=False)
    assert r.returncode != 0
    r = external.run("sh", "-c", f"echo ping | nc -u -w 2 {external.host4} {host_udp}", check=False)
    assert r.stdout.strip() == "ping"
    sid = inspect(name)["Id"]
    pw("rm", "-f", name)
    _assert_gone(sid, inner, inner_udp, host, host_udp)


def test_kill9_of_the_supervisor_then_reconcile_leaves_nothing() -> None:
    inner, host = _ports(2)
    name = uniq("hk")
    proc = subprocess.Popen(
        [sys.executable, "-m", "portwright", "run", "--name", name, "--network", "host",
         "-p", f"{host}:{inner}", "--", sys.executable, "-m", "http.server", str(inner)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_tcp(None, "127.0.0.1", host)
        sid = inspect(name)["Id"]
        assert os.listdir(_pins(sid)), "the links are pinned while it runs"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        pw("ps")  # any command reconciles
        _assert_gone(sid, host, inner)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pw("rm", "-f", name, check=False)


def test_kill9_of_a_detached_supervisor_leaves_nothing(names: list[str]) -> None:
    inner, host = _ports(2)
    name = uniq("hd")
    names.append(name)
    pw("run", "-d", "--name", name, "--network", "host", "-p", f"{host}:{inner}", "--",
       sys.executable, "-m", "http.server", str(inner))  # fmt: skip
    wait_tcp(None, "127.0.0.1", host)
    info = inspect(name)
    sid, sup = info["Id"], info["State"]["SupervisorPid"]
    os.kill(sup, signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline and os.path.exists(_cgroup_dir(sid)):
        time.sleep(0.1)
        pw("ps")  # any command reconciles
    _assert_gone(sid, host, inner)


def test_a_clash_names_the_owner_and_changes_nothing(names: list[str]) -> None:
    inner, host = _ports(2)
    with socket.create_server(("127.0.0.1", host)):
        r = pw("run", "--network", "host", "-p", f"{host}:{inner}", "--", "true", check=False)
        assert r.returncode != 0 and f"pid {os.getpid()}" in r.stderr and len(r.stderr.splitlines()) == 1
    name = uniq("hr")
    names.append(name)
    pw("run", "-d", "--name", name, "--network", "host", "-p", f"{host}:{inner}", "--", "sleep", "60")
    r = pw("run", "--network", "host", "-p", f"{host}:{inner}", "--", "true", check=False)
    assert r.returncode != 0 and name in r.stderr  # the other sandbox is the owner, not a socket
    r = pw("run", "--network", "host", "-p", f"{host + 1}:{inner}", "-p", f"{host + 2}:{inner}", "--",
           "true", check=False)  # fmt: skip
    assert r.returncode != 0 and "publish it once" in r.stderr
    # the refused runs left no pins: only the running sandbox has links (this session's state dir)
    sid = inspect(name)["Id"]
    ours = os.path.dirname(_pins(sid))
    assert os.listdir(ours) == [sid]
    assert len(_listening(host)) == 0  # sleep binds nothing: the port waits for CMD, held by state only


def test_P_allocates_host_ports_for_exposed_ones(names: list[str]) -> None:
    (inner,) = _ports(1)
    name = uniq("hp")
    names.append(name)
    pw("run", "-d", "--name", name, "--network", "host", "-P", "--expose", str(inner), "--",
       sys.executable, "-m", "http.server", str(inner))  # fmt: skip
    lines = pw("port", name).stdout.splitlines()  # "INNER/tcp -> 0.0.0.0:HOST", one per family
    why = f"{pw('ps', '-a').stdout}\n{pw('logs', name, check=False).stderr}"
    assert lines and all(ln.startswith(f"{inner}/tcp -> ") for ln in lines), why
    host = {int(ln.rpartition(":")[2]) for ln in lines}
    assert len(host) == 1
    (hp,) = host
    assert hp != inner
    wait_tcp(None, "127.0.0.1", hp)
    assert "Directory listing" in curl(f"http://127.0.0.1:{hp}/")
    assert _listening(inner) == []
