"""Detached sandboxes under faults, randomized and seeded: concurrent `run -d` through the fork
server in every holding shape (tini with and without reservations, the Python relay holder, proxy
mode), then kill -9 of supervisors, CMDs, socket holders and the fork server itself, racing `rm -f`
and `stop`. Every port must have exactly its own sandbox as owner while that sandbox runs, and
nothing — netns, veth, cgroup, nft element, state row, process — may outlive its sandbox."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from typing import Any

import pytest
from proxynet import wait_until
from pwutil import free_port, link_names, netns_names, nft_owner_elements, pw, uniq

from portwright.engine import NETNS_PREFIX, VETH_PREFIX

pytestmark = pytest.mark.integration

SHAPES = {
    "tini": lambda port: ["-p", f"127.0.0.1:{port}:8000"],  # nat, no relay: tini + socket holder
    "bare": lambda port: [],  # nat network, no port: tini alone
    "relay": lambda port: ["-p", f"{port}:8000"],  # nat wildcard: the [::1] relay, Python holder
    "proxy": lambda port: ["-p", f"127.0.0.1:{port}:8000", "--publish-mode", "proxy"],
}
SERVER = ["python3", "-m", "http.server", "8000"]


def _cgroups() -> set[str]:
    from portwright.kernel import cgroup

    root = cgroup.cgroup2_root()
    parent = os.path.join(root, cgroup.PARENT) if root else ""
    return (
        {d for d in os.listdir(parent) if os.path.isdir(os.path.join(parent, d))}
        if parent and os.path.isdir(parent)
        else set()
    )


def _veths() -> set[str]:
    """Sandbox veths (the default network's bridge, made on first use, may appear and stay)."""
    return {name for name in link_names() if name.startswith("pwv")}


def _port_pids(port: int) -> set[int]:
    out = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return {
        int(p.split("=")[1].split(",")[0])
        for p in out.replace(")", ",").split("pid")[1:]
        if p.startswith("=")
    }


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def _start(name: str, shape: str, port: int, results: dict[str, int]) -> None:
    r = pw("run", "-d", "--name", name, *SHAPES[shape](port), "--", *SERVER, check=False, timeout=90)
    results[name] = r.returncode


def _doc(name: str) -> dict[str, Any]:
    """``inspect NAME``'s one document (inspect prints an array, as Docker's), or {} when gone."""
    docs = json.loads(pw("inspect", name, check=False).stdout or "[]")
    return docs[0] if docs else {}


def _fault(rng: random.Random, name: str) -> str:
    info = _doc(name)
    state = info.get("State", {})
    sup, cmd = state.get("SupervisorPid"), state.get("Pid")
    what = rng.choice(["kill-supervisor", "kill-cmd", "rm", "stop", "kill-holder", "none"])
    try:
        if what == "kill-supervisor" and sup:
            os.kill(sup, signal.SIGKILL)
        elif what == "kill-cmd" and cmd:
            os.kill(cmd, signal.SIGKILL)
        elif what == "kill-holder" and sup:
            kids = open(f"/proc/{sup}/task/{sup}/children").read().split()
            for k in kids:
                if open(f"/proc/{k}/comm").read().strip() == "portwright":
                    os.kill(int(k), signal.SIGKILL)
        elif what == "rm":
            pw("rm", "-f", name, check=False)
        elif what == "stop":
            pw("stop", "-t", "1", name, check=False)
    except OSError:
        pass
    return what


def test_detached_sandboxes_survive_random_faults_and_leave_nothing() -> None:
    seed = int(os.environ.get("PW_FAULT_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    print(f"seed {seed} (replay with PW_FAULT_SEED={seed})")
    names = {uniq("sf"): rng.choice(list(SHAPES)) for _ in range(8)}
    ports = {n: free_port() for n in names}
    results: dict[str, int] = {}
    ids: dict[str, str] = {}
    try:
        threads = [threading.Thread(target=_start, args=(n, s, ports[n], results)) for n, s in names.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(rc == 0 for rc in results.values()), f"seed {seed}: {results}"
        ids.update({n: _doc(n)["Id"] for n in names})
        # Every published port has its own sandbox's process as owner, and answers.
        for n, shape in names.items():
            if shape == "bare":
                continue
            info = _doc(n)
            sup = info["State"]["SupervisorPid"]
            assert wait_until(lambda n=n: _port_pids(ports[n]), timeout=10), f"seed {seed}: {n} holds nothing"
            owners = _port_pids(ports[n]) - {info["State"]["Pid"]}  # CMD never holds a host port...
            assert owners and all(p == sup or _ppid(p) == sup for p in owners), (seed, n, shape, owners, sup)
            assert info["State"]["Pid"] not in _port_pids(ports[n]), (
                f"seed {seed}: CMD inherited a reservation"
            )
        if rng.random() < 0.5:
            from portwright.state import State
            from portwright.zygote import stop_server

            stop_server(State().dir)  # the fork server dies too: supervisors must not care
        faults = {n: _fault(rng, n) for n in names}
        time.sleep(1.5)
        pw("ps", "-a")  # reconcile
        for n, what in faults.items():
            rec = _doc(n)
            if rec and rec["State"]["Running"]:
                assert what in ("none", "kill-holder"), f"seed {seed}: {n} still running after {what}"
                if what == "none":
                    sup = rec["State"]["SupervisorPid"]
                    assert os.path.exists(f"/proc/{sup}"), f"seed {seed}: {n} runs without its supervisor"
    finally:
        for n in names:
            pw("rm", "-f", n, check=False)
    pw("ps", "-a")
    assert all(pw("inspect", n, check=False).returncode != 0 for n in names), (
        f"seed {seed}: a record survived"
    )
    # Only this test's own: other tests (and other users) may make and remove theirs meanwhile.
    mine = set(ids.values())
    assert wait_until(lambda: not _cgroups() & mine, timeout=10), (
        f"seed {seed}: cgroups left {_cgroups() & mine}"
    )
    assert not netns_names() & {NETNS_PREFIX + n for n in names}, f"seed {seed}: netns left"
    assert not _veths() & {VETH_PREFIX + sid[:11] for sid in mine}, f"seed {seed}: veth left"
    assert all(not _port_pids(ports[n]) for n in names), f"seed {seed}: a port is still held"
    leftovers = [e for sid in ids.values() for e in nft_owner_elements(f"pw:{sid}")]
    assert leftovers == []
    with socket.socket() as s:  # and the ports are usable again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", ports[next(iter(names))]))
