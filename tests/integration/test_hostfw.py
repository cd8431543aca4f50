"""Host firewalls (issue 16), each case in a throwaway namespace that plays the host (hostns.py).

A FORWARD-DROP host without Docker (ufw's default, or a bare ``iptables -P FORWARD DROP``): published
ports answer other machines and sandboxes have egress, by the tagged accept that portwright keeps
at the top of ``filter FORWARD`` (removed with the last network, kept across ``ufw reload``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from hostns import HostNS, host_namespace

pytestmark = pytest.mark.skipif(shutil.which("iptables") is None, reason="iptables is not installed")

# GET / answers 200 at once; GET /slow sends 40 chunks of 16 KiB, 0.1 s apart (a flow that stays open).
SERVE = """
import http.server as h, time
class H(h.BaseHTTPRequestHandler):
    def do_GET(self):
        n = 40 if self.path == '/slow' else 1
        self.send_response(200); self.send_header('Content-Length', str(n * 16384)); self.end_headers()
        for _ in range(n):
            self.wfile.write(bytes(16384)); self.wfile.flush(); time.sleep(0.1 if n > 1 else 0)
    def log_message(self, *a): pass
h.ThreadingHTTPServer(('', 8000), H).serve_forever()
"""


def curl(ns: str, url: str, timeout: float = 3) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
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


def reachable(ns: str, url: str, timeout: float = 3) -> bool:
    p = curl(ns, url, timeout)
    return p.returncode == 0 and p.stdout == "200"


def wait_reachable(ns: str, url: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reachable(ns, url, 1):
            return True
        time.sleep(0.1)
    return False


def forward_rules(h: HostNS, tool: str = "iptables") -> list[str]:
    return [ln for ln in h.run(tool, "-S", "FORWARD").stdout.splitlines() if "portwright" in ln]


@contextlib.contextmanager
def egress_server(xns: str) -> Iterator[str]:
    """An HTTP server in the external namespace (the sandbox's "internet"); yields its address."""
    p = subprocess.Popen(
        ["ip", "netns", "exec", xns, "python3", "-c", SERVE.replace("8000)", "8080)")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield "8080"
    finally:
        p.kill()
        p.wait()


def sandbox_pid(h: HostNS, name: str) -> int:
    """CMD's pid: its netns is entered by pid (the /run/netns bind mount portwright makes inside
    ``ip netns exec``'s private mount namespace is not visible from outside it)."""
    return int(json.loads(h.pw("inspect", name).stdout)["State"]["Pid"])


def sandbox_egress(h: HostNS, name: str, url: str) -> bool:
    argv = [
        "nsenter",
        "-t",
        str(sandbox_pid(h, name)),
        "-n",
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "--max-time",
        "3",
        url,
    ]
    return subprocess.run(argv, capture_output=True, timeout=15).returncode == 0


def start_web(h: HostNS, name: str, *publish: str, extra: tuple[str, ...] = ()) -> None:
    args = [a for p in publish for a in ("-p", p)]
    h.pw("run", "-d", "--name", name, *args, *extra, "--", "python3", "-c", SERVE)


@pytest.mark.parametrize("how", ["ufw", "iptables"])
def test_forward_drop_host_without_docker(how: str) -> None:
    with host_namespace() as h:
        if how == "ufw":
            if shutil.which("ufw") is None:
                pytest.skip("ufw is not installed (scripts/bootstrap.sh installs it)")
            h.ufw("--force", "enable")
        else:
            h.run("iptables", "-P", "FORWARD", "DROP")
            h.run("ip6tables", "-P", "FORWARD", "DROP")
        xns, xaddr, host4 = h.external()
        start_web(h, "web", "18781:8000")
        assert wait_reachable(xns, f"http://{host4}:18781/"), (
            "external client cannot reach the published port"
        )
        rules = forward_rules(h)
        assert len(rules) == 2 and all("-j ACCEPT" in r for r in rules), rules
        assert h.run("iptables", "-S", "FORWARD").stdout.splitlines()[1] in rules  # at the top
        with egress_server(xns):
            assert wait_reachable(xns, f"http://{xaddr}:8080/")
            assert sandbox_egress(h, "web", f"http://{xaddr}:8080/"), "sandbox has no egress"
        h.pw("rm", "-f", "web")
        h.pw("network", "rm", "pw0")
        assert forward_rules(h) == [], "the accept outlived the last network"


def test_plain_accept_host_gets_no_rule() -> None:
    """A host whose FORWARD drops nothing (policy ACCEPT, no rules) is left as it is."""
    with host_namespace() as h:
        h.run("iptables", "-S", "FORWARD")  # makes iptables-nft's filter table, policy ACCEPT
        start_web(h, "web", "18782:8000")
        xns, _, host4 = h.external()
        assert wait_reachable(xns, f"http://{host4}:18782/")
        assert forward_rules(h) == []


def test_ufw_reload_keeps_ports_and_flows() -> None:
    if shutil.which("ufw") is None:
        pytest.skip("ufw is not installed (scripts/bootstrap.sh installs it)")
    with host_namespace() as h:
        h.ufw("--force", "enable")
        xns, _, host4 = h.external()
        start_web(h, "web", "18783:8000")
        url = f"http://{host4}:18783/"
        assert wait_reachable(xns, url)
        # A flow that stays open across the reload: a download that takes about 4 s.
        mid = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                xns,
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                "--max-time",
                "30",
                f"{url}slow",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        h.ufw("reload")
        assert reachable(xns, url, 2), "published port lost after ufw reload"
        assert len(forward_rules(h)) == 2
        out, _ = mid.communicate(timeout=40)
        assert mid.returncode == 0 and out == str(40 * 16384), f"the flow open across ufw reload broke: {out}"
