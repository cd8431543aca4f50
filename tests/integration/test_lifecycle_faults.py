"""The sandbox lifecycle under faults (issue 18): pid reuse after a crash, 'network rm' racing
'run', detached descendants, UDP flows that outlive a sandbox, relative commands, names, a failed
run around a netns it did not make, a state directory with a long path, and a failure after CMD
has started. Each case failed against the release before these fixes."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from proxynet import wait_until
from pwutil import (
    free_port,
    inspect,
    link_names,
    netns_names,
    nft_owner_elements,
    ps_json,
    pw,
    temp_network,
    uniq,
)

import pwstate

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pids_with(marker: str) -> list[int]:
    """The sleep processes whose command line has marker (not a supervisor that names them)."""
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    pids = []
    for p in out.split():
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() == "sleep":
                    pids.append(int(p))
        except OSError:
            pass
    return pids


def test_detached_descendants_die_with_the_sandbox() -> None:
    """CMD starts a child that leaves its process group with setsid; rm -f still kills it."""
    name, marker = uniq("cg"), f"{random.randint(100000, 999999)}.25"
    pw("run", "-d", "--name", name, "--", "sh", "-c", f"setsid sleep {marker} & exec sleep {marker}")
    try:
        assert wait_until(lambda: len(_pids_with(f"sleep {marker}")) == 2), _pids_with(marker)
    finally:
        pw("rm", "-f", name)
    assert wait_until(lambda: not _pids_with(f"sleep {marker}"), timeout=5), (
        "a setsid descendant survived rm -f"
    )


def test_foreground_exit_takes_detached_descendants() -> None:
    marker = f"{random.randint(100000, 999999)}.5"
    p = pw("run", "--", "sh", "-c", f"setsid sleep {marker} </dev/null >/dev/null 2>&1 & exit 3", check=False)
    assert p.returncode == 3, p.stderr
    assert wait_until(lambda: not _pids_with(f"sleep {marker}"), timeout=5)


def test_reconcile_never_kills_a_reused_pid() -> None:
    """After kill -9 of supervisor and CMD, CMD's pid belongs to an unrelated session leader."""
    name = uniq("pr")
    pw("run", "-d", "--name", name, "--", "sleep", "300")
    rec = inspect(name)
    sup, cmd = rec["State"]["SupervisorPid"], rec["State"]["Pid"]
    stranger = subprocess.Popen(["sleep", "301"], start_new_session=True)
    try:
        os.kill(sup, signal.SIGKILL)
        os.kill(cmd, signal.SIGKILL)
        assert wait_until(lambda: not _alive(sup) and not _alive(cmd))
        # The pid was reused: the recorded pid now names the stranger (its own process group).
        db = sqlite3.connect(os.path.join(os.environ["PORTWRIGHT_STATE_DIR"], "state.db"))
        with db:
            db.execute("UPDATE sandboxes SET cmd_pid=? WHERE name=?", (stranger.pid, name))
        db.close()
        pw("ps", "-a")  # runs the reconcile pass
        time.sleep(0.2)
        assert stranger.poll() is None, "reconcile killed an unrelated process group"
    finally:
        stranger.kill()
        stranger.wait()
        pw("rm", "-f", name, check=False)


def test_network_rm_racing_run_never_loses_a_sandbox() -> None:
    """Either the run fails (network gone) or 'network rm' refuses (in use): never a live sandbox
    whose network was deleted under it, and never a leaked netns or veth."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    # Ours, by name: the machine is shared, and a diff of every pw-* netns and link also caught
    # another session's sandbox (seen: pw-big). A veth dies with its sandbox's netns.
    mine: set[str] = set()
    nets: list[str] = []
    for _ in range(10):
        net = uniq("rr")
        nets.append(net)
        pw("network", "create", net)
        name = uniq("rs")
        mine |= {f"pw-{name}", json.loads(pw("network", "inspect", net).stdout)[0]["Bridge"]}
        results: dict[str, subprocess.CompletedProcess[str]] = {}

        def run(net: str = net, name: str = name, results: dict = results) -> None:  # type: ignore[type-arg]
            results["run"] = pw(
                "run", "-d", "--name", name, "--network", net, "--", "sleep", "60", check=False
            )

        def rm(net: str = net, results: dict = results) -> None:  # type: ignore[type-arg]
            time.sleep(rng.uniform(0, 0.6))
            results["rm"] = pw("network", "rm", net, check=False)

        threads = [threading.Thread(target=run), threading.Thread(target=rm)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ran, removed = results["run"].returncode == 0, results["rm"].returncode == 0
        msg = f"seed {seed}: run={results['run'].stderr.strip()!r} rm={results['rm'].stderr.strip()!r}"
        assert ran != removed, msg
        if ran:
            assert inspect(name)["State"]["Running"], msg
            mine.add("pwv" + inspect(name)["Id"][:11])
            pw("rm", "-f", name)
            assert pw("rm", "-f", name, check=False).returncode != 0  # gone, as it should be
            pw("network", "rm", net)
        else:
            assert "network" in results["run"].stderr, msg
            assert pw("inspect", name, check=False).returncode != 0, msg
    assert not mine & (netns_names() | link_names()), f"seed {seed}: leaked netns, bridge or veth"
    # nor their nft rules: a run that lost the race must not put back the removed network's rules
    assert not [n for n in nets if nft_owner_elements(f'"pw-net:{n}"')], (
        f"seed {seed}: a removed network's rules came back"
    )


def _udp_sender(port: int, stop: threading.Event, src: socket.socket) -> None:
    while not stop.is_set():
        try:
            src.sendto(b"ping", ("127.0.0.1", port))
        except OSError:
            pass
        stop.wait(0.05)


def test_udp_flow_does_not_follow_the_address_to_the_next_sandbox(tmp_path: object) -> None:
    """A client keeps sending to a published UDP port while its sandbox goes; the next sandbox
    given the same address never published that port and must receive nothing."""
    with temp_network(prefix="cu") as net:
        port = free_port(kind=socket.SOCK_DGRAM)
        echo = [
            sys.executable,
            "-c",
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',5000))\n"
            "while True:\n d,a=s.recvfrom(100);s.sendto(b'from-'+sys.argv[1].encode(),a)\n",
        ]
        a = uniq("ua")
        pw("run", "-d", "--name", a, "--network", net, "-p", f"127.0.0.1:{port}:5000/udp", "--", *echo, "a")
        ip = inspect(a)["NetworkSettings"]["IPAddress"]
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        client.settimeout(0.2)
        stop = threading.Event()
        sender = threading.Thread(target=_udp_sender, args=(port, stop, client), daemon=True)
        sender.start()
        try:
            assert wait_until(lambda: _recv(client) == b"from-a", timeout=10), "sandbox a never answered"
            pw("rm", "-f", a)
            b = uniq("ub")
            pw("run", "-d", "--name", b, "--network", net, "--", *echo, "b")
            assert inspect(b)["NetworkSettings"]["IPAddress"] == ip  # the address was handed on
            time.sleep(1.5)
            got = [_recv(client) for _ in range(10)]
            assert b"from-b" not in got, "a flow to a removed sandbox's published port reached the next one"
        finally:
            stop.set()
            sender.join()
            client.close()


def _recv(s: socket.socket) -> bytes | None:
    try:
        return s.recv(100)
    except OSError:
        return None


def test_detached_relative_command_runs_from_the_users_directory() -> None:
    d = tempfile.mkdtemp(prefix="pw-rel-")
    try:
        script = os.path.join(d, "script.sh")
        with open(script, "w") as f:
            f.write("#!/bin/sh\necho relative-ok\n")
        os.chmod(script, 0o755)
        name = uniq("rl")
        p = subprocess.run(
            [sys.executable, "-m", "portwright", "run", "-d", "--name", name, "--", "./script.sh"],
            capture_output=True,
            text=True,
            cwd=d,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        assert wait_until(lambda: "relative-ok" in pw("logs", name).stdout)
        pw("rm", "-f", name)
    finally:
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)


def test_a_name_that_prefixes_another_id_is_free() -> None:
    first = uniq("np")
    sid = pw("run", "-d", "--name", first, "--", "sleep", "60").stdout.strip()
    second = sid[:5]
    try:
        p = pw("run", "-d", "--name", second, "--", "sleep", "60", check=False)
        assert p.returncode == 0, p.stderr
        assert inspect(second)["Name"] == second
    finally:
        pw("rm", "-f", second, check=False)
        pw("rm", "-f", first)


def test_failed_run_keeps_a_netns_it_did_not_create() -> None:
    name = uniq("fn")
    subprocess.run(["ip", "netns", "add", f"pw-{name}"], check=True)
    try:
        p = pw("run", "--name", name, "--", "true", check=False)
        assert p.returncode != 0
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert f"pw-{name}" in netns_names(), "a failed run deleted a netns that was not its own"
        assert pw("inspect", name, check=False).returncode != 0
    finally:
        subprocess.run(["ip", "netns", "del", f"pw-{name}"], check=False)


def test_long_state_directory_works_end_to_end() -> None:
    """sun_path holds 107 bytes; a deep PORTWRIGHT_STATE_DIR once left CMD orphaned."""
    base = tempfile.mkdtemp(prefix="pw-long-")
    deep = pwstate.register(os.path.join(base, *(["d" * 40] * 3)))
    env = {**os.environ, "PORTWRIGHT_STATE_DIR": deep}
    name = uniq("ls")
    marker = f"{random.randint(100000, 999999)}.75"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "portwright", *args], capture_output=True, text=True, env=env, timeout=60
        )

    try:
        assert len(os.path.join(deep, "ctl", "x" * 12 + ".sock")) > 108
        p = cli("run", "-d", "--name", name, "--network", "none", "--", "sleep", marker)
        assert p.returncode == 0, p.stderr
        stats = cli("stats", name)
        assert stats.returncode == 0, stats.stderr
        assert cli("rm", "-f", name).returncode == 0
        assert wait_until(lambda: not _pids_with(f"sleep {marker}"), timeout=5)
    finally:
        cli("rm", "-f", name)
        for pid in _pids_with(f"sleep {marker}"):
            os.kill(pid, signal.SIGKILL)
        pwstate.remove(deep)
        subprocess.run(["rm", "-rf", base], check=False)


def test_a_failure_after_cmd_started_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last setup step fails after CMD is running: CMD and everything else go."""
    from portwright import state as state_mod
    from portwright.errors import PortwrightError
    from portwright.spec import parse_sandbox_spec
    from portwright.supervisor import Supervisor

    real = state_mod.State.update_sandbox

    def failing(self: state_mod.State, sid: str, **fields: object) -> None:
        if fields.get("status") == "running":
            raise PortwrightError("injected failure after CMD started")
        real(self, sid, **fields)

    monkeypatch.setattr(state_mod.State, "update_sandbox", failing)
    marker = f"{random.randint(100000, 999999)}.125"
    name = uniq("af")
    sup = Supervisor(
        parse_sandbox_spec(
            ["sh", "-c", f"setsid sleep {marker} & exec sleep {marker}"],
            name=name,
            publish=[f"127.0.0.1:{free_port()}:80"],
            detach=True,
        )
    )
    with pytest.raises(PortwrightError, match="injected"):
        sup.setup()
    assert wait_until(lambda: not _pids_with(f"sleep {marker}"), timeout=5), "CMD outlived a failed setup"
    # Its own namespace and veth, by name: a before/after diff of all pw-* links also caught the
    # default network's bridge (kept, as Docker keeps docker0) whenever this ran first in a session.
    assert sup.live is not None and sup.live.sandbox.veth
    assert f"pw-{name}" not in netns_names() and sup.live.sandbox.veth not in link_names()
    assert not state_mod.State().name_taken(name)
    assert all(r["Names"] != name for r in ps_json("-a"))
