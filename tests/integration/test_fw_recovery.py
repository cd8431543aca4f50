"""Firewall reload recovery (issue 13), each case in a throwaway namespace that plays the host.

A sandbox publishes a port; then the firewall is reloaded (``nft flush ruleset``), our table is
deleted, or one element is. Within 3 s the published port answers again from another machine and
on 127.0.0.1, and the sandbox reaches the outside through the network's masquerade (the external
machine has no route back to the sandbox subnet, so egress works only when masquerade is in
place). Detached sandboxes are put back by the fork server, in both holding shapes (tini for a
127.0.0.1-only mapping; a Python supervisor when the nat ``[::1]`` relay runs), a foreground
sandbox by its own supervisor. A new sandbox on the old network works after a flush.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from hostns import HostNS, host_namespace
from pwutil import within

from portwright.firewall.rules import published

SERVE = """
import http.server as h
class H(h.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers()
        self.wfile.write(b'ok')
    def log_message(self, *a): pass
h.ThreadingHTTPServer(('', PORT), H).serve_forever()
"""
RECOVERY_BUDGET = 3.0  # seconds, as the issue asks
KINDS = ("web", "lo", "fg", "late")


@contextlib.contextmanager
def _fake_host() -> Iterator[tuple[HostNS, dict[str, str]]]:
    """A host namespace and sandbox names of this test's own: /run/netns is shared by every host
    namespace, so parallel tests must never reuse a name (nor leave its mount-point file)."""
    sfx = secrets.token_hex(3)
    names = {k: f"r13{k}{sfx}" for k in KINDS}
    try:
        with host_namespace() as h:
            yield h, names
    finally:
        for n in names.values():
            path = f"/run/netns/pw-{n}"
            if os.path.exists(path) and not os.path.ismount(path):
                os.unlink(path)


def _curl(argv_prefix: list[str], url: str, timeout: float) -> bool:
    p = subprocess.run(
        [
            *argv_prefix,
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            str(timeout),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )
    return p.returncode == 0 and p.stdout == "200"


def _sandbox_pid(h: HostNS, name: str) -> int:
    doc = json.loads(h.pw("inspect", name).stdout)
    return int((doc[0] if isinstance(doc, list) else doc)["State"]["Pid"])


@contextlib.contextmanager
def _world(h: HostNS) -> Iterator[tuple[str, str, str]]:
    """The external machine (no route back to sandbox subnets) with an HTTP server of its own."""
    xns, x4, host4 = h.external()
    subprocess.run(["ip", "-n", xns, "route", "del", "default"], check=True)
    srv = subprocess.Popen(
        ["ip", "netns", "exec", xns, sys.executable, "-c", SERVE.replace("PORT", "18999")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert within(10, lambda: _curl(["ip", "netns", "exec", xns], f"http://{x4}:18999/", 1))
        yield xns, x4, host4
    finally:
        srv.kill()
        srv.wait()


def _paths(h: HostNS, name: str, port: int, world: tuple[str, str, str], external: bool) -> dict[str, bool]:
    """Each path, given RECOVERY_BUDGET seconds to answer."""
    xns, x4, host4 = world
    out = {
        "127.0.0.1": within(
            RECOVERY_BUDGET, lambda: _curl(["ip", "netns", "exec", h.name], f"http://127.0.0.1:{port}/", 1)
        ),
        "egress": within(
            RECOVERY_BUDGET,
            lambda: _curl(["nsenter", "-t", str(_sandbox_pid(h, name)), "-n"], f"http://{x4}:18999/", 1),
        ),
    }
    if external:
        out["external"] = within(
            RECOVERY_BUDGET, lambda: _curl(["ip", "netns", "exec", xns], f"http://{host4}:{port}/", 1)
        )
    return out


def _nat(h: HostNS) -> set[tuple[str, str, int]]:
    """(host address, proto, port) of every element of the publish maps, from the live table."""
    out = h.run("nft", "-j", "list", "table", "inet", "portwright", check=False).stdout
    return {(str(p.host_ip), p.proto, p.host_port) for p in published(json.loads(out))} if out else set()


DISRUPTIONS = {
    "flush-ruleset": ("nft", "flush", "ruleset"),
    "delete-table": ("nft", "delete", "table", "inet", "portwright"),
    "delete-element": ("nft", "delete", "element", "inet", "portwright", "pub4_any", "{ tcp . 18080 }"),
}


@pytest.mark.parametrize("disruption", sorted(DISRUPTIONS))
def test_detached_sandboxes_come_back(disruption: str) -> None:
    with _fake_host() as (h, names), _world(h) as world:
        # relay-held (nat's [::1] relay runs in a Python supervisor) and tini-held (127.0.0.1 only)
        h.pw(
            "run",
            "-d",
            "--name",
            names["web"],
            "-p",
            "18080:8000",
            "--",
            sys.executable,
            "-c",
            SERVE.replace("PORT", "8000"),
        )
        h.pw(
            "run",
            "-d",
            "--name",
            names["lo"],
            "-p",
            "127.0.0.1:18081:8000",
            "--",
            sys.executable,
            "-c",
            SERVE.replace("PORT", "8000"),
        )
        before = _paths(h, names["web"], 18080, world, external=True) | {
            "lo " + k: v for k, v in _paths(h, names["lo"], 18081, world, external=False).items()
        }
        assert all(before.values()), before
        h.run(*DISRUPTIONS[disruption])
        after = _paths(h, names["web"], 18080, world, external=True) | {
            "lo " + k: v for k, v in _paths(h, names["lo"], 18081, world, external=False).items()
        }
        assert all(after.values()), f"{disruption}: not back within {RECOVERY_BUDGET}s: {after}"
        # served by kernel NAT again, not by the [::] relay socket that also answers IPv4 when the
        # element is gone (the silent degradation of the issue)
        assert within(RECOVERY_BUDGET, lambda: ("0.0.0.0", "tcp", 18080) in _nat(h))
        assert ("127.0.0.1", "tcp", 18081) in _nat(h)
        # whole again, nothing doubled: each network rule once
        table = json.loads(h.run("nft", "-j", "list", "table", "inet", "portwright").stdout)["nftables"]
        net_rules = [
            (i["rule"]["chain"], i["rule"]["comment"], json.dumps(i["rule"]["expr"]))
            for i in table
            if "rule" in i and str(i["rule"].get("comment", "")).startswith("pw-net:")
        ]
        assert net_rules and len(net_rules) == len(set(net_rules))
        h.pw("rm", "-f", names["web"], names["lo"])
        assert "pw:" not in h.run("nft", "list", "table", "inet", "portwright", check=False).stdout


def test_foreground_supervisor_puts_its_rules_back() -> None:
    with _fake_host() as (h, names), _world(h) as world:
        env = dict(os.environ, PORTWRIGHT_STATE_DIR=h.state)
        fg = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                h.name,
                sys.executable,
                "-m",
                "portwright",
                "run",
                "--name",
                names["fg"],
                "-p",
                "127.0.0.1:18080:8000",
                "--",
                sys.executable,
                "-c",
                SERVE.replace("PORT", "8000"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert within(15, lambda: _curl(["ip", "netns", "exec", h.name], "http://127.0.0.1:18080/", 1))
            h.run("nft", "flush", "ruleset")
            after = _paths(h, names["fg"], 18080, world, external=False)
            assert all(after.values()), after
        finally:
            fg.send_signal(signal.SIGINT)
            try:
                fg.wait(20)
            except subprocess.TimeoutExpired:
                fg.kill()
                fg.wait()


def test_a_new_sandbox_on_an_old_network_works_after_a_flush() -> None:
    """No watcher runs (no sandbox is left): the next 'run' alone must put the network back."""
    with _fake_host() as (h, names), _world(h) as world:
        h.pw("network", "create", "n1")
        h.run("nft", "flush", "ruleset")
        h.pw(
            "run",
            "-d",
            "--network",
            "n1",
            "--name",
            names["late"],
            "-p",
            "18080:8000",
            "--",
            sys.executable,
            "-c",
            SERVE.replace("PORT", "8000"),
        )
        paths = _paths(h, names["late"], 18080, world, external=True)
        assert all(paths.values()), paths


def test_every_command_puts_a_network_back() -> None:
    """A network whose bridge element alone was deleted (its rules still name it) used to stay
    broken: 127.0.0.1 to its sandboxes is masqueraded only into bridges of that set."""
    with _fake_host() as (h, names):
        h.pw("network", "create", "n1")
        bridge = json.loads(h.pw("network", "inspect", "n1").stdout)
        bridge = bridge[0] if isinstance(bridge, list) else bridge
        name = bridge["Bridge"]
        h.run("nft", "delete", "element", "inet", "portwright", "bridges", "{ " + name + " }")
        assert name not in h.run("nft", "list", "set", "inet", "portwright", "bridges").stdout
        h.pw("ps")  # any command
        assert name in h.run("nft", "list", "set", "inet", "portwright", "bridges").stdout
        h.run("nft", "delete", "table", "inet", "portwright")
        h.pw("network", "ls")
        assert name in h.run("nft", "list", "set", "inet", "portwright", "bridges").stdout


def test_audit_and_ports_name_a_lost_publication_and_prune_repairs_it() -> None:
    """With no watcher running (the fork server is stopped), a deleted element is reported by
    ``audit`` (HIGH, with the fix) and by ``ports``; ``prune`` puts it back."""
    with _fake_host() as (h, names):
        name = names["web"]
        h.pw(
            "run",
            "-d",
            "--name",
            name,
            "-p",
            "18080:8000",
            "--",
            sys.executable,
            "-c",
            SERVE.replace("PORT", "8000"),
        )
        with open(os.path.join(h.state, "ctl", "zygote.pid")) as f:
            os.kill(int(f.read().strip()), signal.SIGTERM)
        assert within(10, lambda: not os.path.exists(os.path.join(h.state, "ctl", "zygote.pid")))
        audit = json.loads(h.pw("audit", "--json", check=False).stdout)
        assert "degraded" not in {f["code"] for f in audit["findings"]}
        h.run("nft", "delete", "element", "inet", "portwright", "pub4_any", "{ tcp . 18080 }")
        p = h.pw("audit", "--json", check=False)
        found = [f for f in json.loads(p.stdout)["findings"] if f["code"] == "degraded"]
        assert found and found[0]["severity"] == "high" and "prune" in found[0]["fix"], p.stdout
        assert p.returncode != 0
        rows = h.pw("ports").stdout
        assert "MISSING" in rows and "18080" in rows, rows
        h.pw("prune", "-f")
        assert ("0.0.0.0", "tcp", 18080) in _nat(h)
        audit = json.loads(h.pw("audit", "--json", check=False).stdout)
        assert "degraded" not in {f["code"] for f in audit["findings"]}
