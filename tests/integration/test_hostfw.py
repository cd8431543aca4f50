"""Host firewalls (issue 16), each case in a throwaway namespace that plays the host (hostns.py).

A FORWARD-DROP host without Docker (ufw's default, or a bare ``iptables -P FORWARD DROP``): published
ports answer other machines and sandboxes have egress, by the tagged accept that portwright keeps
at the top of ``filter FORWARD`` (removed with the last network, kept across ``ufw reload``).
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
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
    doc = json.loads(h.pw("inspect", name).stdout)
    return int((doc[0] if isinstance(doc, list) else doc)["State"]["Pid"])


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


def start_web(h: HostNS, *publish: str, extra: tuple[str, ...] = ()) -> str:
    """A detached web sandbox; its name is unique machine-wide (sandbox netns names are global)."""
    name = f"fw{secrets.token_hex(3)}"
    args = [a for p in publish for a in ("-p", p)]
    h.pw("run", "-d", "--name", name, *args, *extra, "--", "python3", "-c", SERVE)
    return name


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
        name = start_web(h, "18781:8000")
        assert wait_reachable(xns, f"http://{host4}:18781/"), (
            "external client cannot reach the published port"
        )
        rules = forward_rules(h)
        assert len(rules) == 2 and all("-j ACCEPT" in r for r in rules), rules
        assert h.run("iptables", "-S", "FORWARD").stdout.splitlines()[1] in rules  # at the top
        with egress_server(xns):
            assert wait_reachable(xns, f"http://{xaddr}:8080/")
            assert sandbox_egress(h, name, f"http://{xaddr}:8080/"), "sandbox has no egress"
        h.pw("rm", "-f", name)
        h.pw("network", "rm", "pw0")
        assert forward_rules(h) == [], "the accept outlived the last network"


def test_plain_accept_host_gets_no_rule() -> None:
    """A host whose FORWARD drops nothing (policy ACCEPT, no rules) is left as it is."""
    with host_namespace() as h:
        h.run("iptables", "-S", "FORWARD")  # makes iptables-nft's filter table, policy ACCEPT
        start_web(h, "18782:8000")
        xns, _, host4 = h.external()
        assert wait_reachable(xns, f"http://{host4}:18782/")
        assert forward_rules(h) == []


def test_ufw_reload_keeps_ports_and_flows() -> None:
    if shutil.which("ufw") is None:
        pytest.skip("ufw is not installed (scripts/bootstrap.sh installs it)")
    with host_namespace() as h:
        h.ufw("--force", "enable")
        xns, _, host4 = h.external()
        start_web(h, "18783:8000")
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


def audit(h: HostNS) -> list[dict[str, object]]:
    out = h.pw("audit", "--json", check=False)
    assert out.returncode in (0, 10), out.stderr
    return list(json.loads(out.stdout)["findings"])


def codes(findings: list[dict[str, object]], port: int) -> dict[str, str]:
    return {str(f["code"]): str(f["message"]) for f in findings if str(f["subject"]).endswith(f":{port}")}


def test_audit_names_forward_policy_drop_instead_of_claiming_exposure() -> None:
    with host_namespace() as h:
        h.run("iptables", "-P", "FORWARD", "DROP")
        h.run("ip6tables", "-P", "FORWARD", "DROP")
        start_web(h, "18784:8000")
        xns, _, host4 = h.external()
        assert wait_reachable(xns, f"http://{host4}:18784/")
        assert "exposed" in codes(audit(h), 18784)  # reachable from everywhere: exposed, truly
        # Someone puts a RETURN on top: our accepts stay, but FORWARD's policy now decides.
        for tool in ("iptables", "ip6tables"):
            h.run(tool, "-I", "FORWARD", "1", "-j", "RETURN")
        assert not reachable(xns, f"http://{host4}:18784/", 2)
        found = codes(audit(h), 18784)
        assert "exposed" not in found, found
        assert "blocked by filter FORWARD policy DROP" in found["blocked"], found


def test_audit_names_a_foreign_forward_hook_drop() -> None:
    with host_namespace() as h:
        start_web(h, "18785:8000")
        xns, _, host4 = h.external()
        assert wait_reachable(xns, f"http://{host4}:18785/")
        h.run("nft", "add table inet hardened")
        h.run("nft", "add chain inet hardened fwdrop { type filter hook forward priority 10; policy drop; }")
        assert not reachable(xns, f"http://{host4}:18785/", 2)
        found = codes(audit(h), 18785)
        assert "exposed" not in found and "fwdrop policy DROP (inet table hardened)" in found["blocked"], (
            found
        )


@pytest.mark.parametrize("rule", ["deny", "allow", "allow-subnet"])
def test_audit_tells_the_truth_about_ufw_in_nat_mode(rule: str) -> None:
    if shutil.which("ufw") is None:
        pytest.skip("ufw is not installed (scripts/bootstrap.sh installs it)")
    with host_namespace() as h:
        h.ufw("--force", "enable")
        if rule == "deny":
            h.ufw("deny", "18786/tcp")
        elif rule == "allow":
            h.ufw("allow", "18786/tcp")
        else:
            h.ufw("allow", "from", "198.19.250.0/24", "to", "any", "port", "18786", "proto", "tcp")
        start_web(h, "18786:8000")
        xns, _, host4 = h.external()
        # nat mode: DNAT goes through FORWARD, so ufw's INPUT rules do not apply (the old bypass)...
        assert wait_reachable(xns, f"http://{host4}:18786/")
        found = codes(audit(h), 18786)
        assert "exposed" in found and "blocked" not in found, found
        # ...and audit says so exactly when ufw would have said otherwise.
        if rule == "deny":
            assert "admitted despite ufw's deny" in found["input-bypass"], found
        elif rule == "allow":
            assert "input-bypass" not in found, found
        else:
            assert "only from 198.19.250.0/24" in found["input-bypass"], found


def need_ufw() -> None:
    if shutil.which("ufw") is None:
        pytest.skip("ufw is not installed (scripts/bootstrap.sh installs it)")


def test_firewall_host_obeys_ufw_deny_and_allow() -> None:
    need_ufw()
    with host_namespace() as h:
        h.ufw("--force", "enable")  # default: deny incoming
        xns, _, host4 = h.external()
        url = f"http://{host4}:18790/"
        p = h.pw(
            "run",
            "-d",
            "--firewall",
            "host",
            "--name",
            f"fw{secrets.token_hex(3)}",
            "-p",
            "18790:8000",
            "--",
            "python3",
            "-c",
            SERVE,
        )
        # One line at publish time says the host firewall drops it, naming the deciding rule.
        notes = [ln for ln in p.stderr.splitlines() if "--firewall host" in ln]
        assert len(notes) == 1 and "tcp 0.0.0.0:18790 is dropped" in notes[0], p.stderr
        # Local clients keep the fast path (and are not subject to ufw's incoming policy).
        assert wait_reachable(h.name, "http://127.0.0.1:18790/")
        assert not reachable(xns, url, 2), "ufw's default deny did not close the published port"
        assert "exposed" not in codes(audit(h), 18790)
        h.ufw("allow", "18790/tcp")
        assert wait_reachable(xns, url), "ufw allow did not open the published port"
        assert "exposed" in codes(audit(h), 18790)
        h.ufw("delete", "allow", "18790/tcp")
        h.ufw("deny", "18790/tcp")
        assert not reachable(xns, url, 2), "ufw deny did not close the published port"
        # No DNAT element for the host port: only the 127.0.0.1 fast path is in the maps.
        table = h.run("nft", "list", "table", "inet", "portwright").stdout
        assert "127.0.0.1 . tcp . 18790" in table and "tcp . 18790 :" not in table, table


def test_firewall_host_allows_one_subnet_only() -> None:
    need_ufw()
    with host_namespace() as h:
        h.ufw("--force", "enable")
        x1, _, host4 = h.external(1)  # 198.19.250.6, in 198.19.250.4/30
        x2, _, _ = h.external(2)  # 198.19.250.10, outside it
        h.ufw("allow", "from", "198.19.250.4/30", "to", "any", "port", "18791", "proto", "tcp")
        h.pw(
            "run",
            "-d",
            "--firewall",
            "host",
            "--name",
            f"fw{secrets.token_hex(3)}",
            "-p",
            "18791:8000",
            "--",
            "python3",
            "-c",
            SERVE,
        )
        assert wait_reachable(x1, f"http://{host4}:18791/")
        assert not reachable(x2, f"http://{h_addr(h, 2)}:18791/", 2)


def h_addr(h: HostNS, idx: int) -> str:
    return f"198.19.250.{4 * idx + 1}"  # the host's side of external(idx) (hostns.external)


def test_config_file_sets_the_firewall_default() -> None:
    need_ufw()
    with host_namespace() as h:
        h.ufw("--force", "enable")
        xns, _, host4 = h.external()
        with open(f"{h.state}/config.toml", "w") as f:
            f.write('[run]\nfirewall = "host"\n')
        start_web(h, "18792:8000")
        assert wait_reachable(h.name, "http://127.0.0.1:18792/")
        assert not reachable(xns, f"http://{host4}:18792/", 2), "the config file's default was ignored"
        with open(f"{h.state}/config.toml", "w") as f:
            f.write('[run]\nfirewall = "sideways"\n')
        p = h.pw("run", "--rm", "--", "true", check=False)
        assert p.returncode != 0 and "config.toml: [run] firewall = 'sideways'" in p.stderr, p.stderr


def need_firewalld() -> None:
    if shutil.which("firewalld") is None or shutil.which("dbus-daemon") is None:
        pytest.skip("firewalld is not installed (scripts/bootstrap.sh installs it)")


def test_firewalld_zone_gives_egress_and_ports_and_survives_reload() -> None:
    need_firewalld()
    with host_namespace() as h, h.firewalld():
        xns, xaddr, host4 = h.external()
        name = start_web(h, "18795:8000")
        url = f"http://{host4}:18795/"
        assert wait_reachable(xns, url), "a published port is not reachable on a firewalld host"
        assert h.run("firewall-cmd", "--get-zone-of-interface", bridge_of(h)).stdout.strip() == "portwright"
        with egress_server(xns):
            assert wait_reachable(xns, f"http://{xaddr}:8080/")
            assert sandbox_egress(h, name, f"http://{xaddr}:8080/"), "no egress on a firewalld host"
            h.run("firewall-cmd", "--reload")
            # The runtime binding is gone with the reload; the supervisors' resync puts it back.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not sandbox_egress(h, name, f"http://{xaddr}:8080/"):
                time.sleep(0.2)
            assert sandbox_egress(h, name, f"http://{xaddr}:8080/"), "egress did not come back after --reload"
            assert reachable(xns, url)


def bridge_of(h: HostNS) -> str:
    nets = json.loads(h.pw("network", "inspect", "pw0").stdout)
    net = nets[0] if isinstance(nets, list) else nets
    return str(net.get("Bridge") or net.get("bridge") or net["Options"]["bridge"])


@pytest.mark.parametrize("in_zone", [False, True])
def test_firewall_host_obeys_firewalld_zone(in_zone: bool) -> None:
    need_firewalld()
    with host_namespace() as h, h.firewalld():
        xns, _, host4 = h.external()
        # The external veth is in firewalld's default zone (public): it admits ssh and dhcpv6 only.
        if in_zone:
            h.run("firewall-cmd", "--permanent", "--zone", "public", "--add-port", "18796/tcp")
            h.run("firewall-cmd", "--reload")
        h.pw(
            "run",
            "-d",
            "--firewall",
            "host",
            "--name",
            f"fw{secrets.token_hex(3)}",
            "-p",
            "18796:8000",
            "--",
            "python3",
            "-c",
            SERVE,
        )
        assert wait_reachable(h.name, "http://127.0.0.1:18796/")
        if in_zone:
            assert wait_reachable(xns, f"http://{host4}:18796/")
        else:
            assert not reachable(xns, f"http://{host4}:18796/", 2), "firewalld's zone did not close the port"


def test_random_firewall_churn_keeps_promises() -> None:
    """Seeded churn: ufw allow/deny/reload of a --firewall host port and a nat port, and our FORWARD
    accepts deleted behind portwright's back. After each step: the --firewall host port answers
    other machines exactly when ufw's last word on it was allow; the nat port always answers (the
    accepts come back on the nftables event, or the 5 s re-check)."""
    need_ufw()
    seed = int.from_bytes(secrets.token_bytes(4), "big")
    print(f"seed {seed}")
    rnd = random.Random(seed)
    with host_namespace() as h:
        h.ufw("--force", "enable")
        xns, _, host4 = h.external()
        start_web(h, "18797:8000")
        h.pw(
            "run",
            "-d",
            "--firewall",
            "host",
            "--name",
            f"fw{secrets.token_hex(3)}",
            "-p",
            "18798:8000",
            "--",
            "python3",
            "-c",
            SERVE,
        )
        allowed = False
        for step in range(8):
            op = rnd.choice(["allow", "deny", "reload", "fault"])
            if op == "allow":
                h.ufw("allow", "18798/tcp")
                allowed = True
            elif op == "deny":
                h.ufw("deny", "18798/tcp")
                allowed = False
            elif op == "reload":
                h.ufw("reload")
            else:
                for rule in forward_rules(h):
                    h.run("iptables", *rule.replace("-A", "-D", 1).split())
            assert wait_reachable(xns, f"http://{host4}:18797/", 10), (
                f"seed {seed} step {step} ({op}): nat port lost"
            )
            got = (
                wait_reachable(xns, f"http://{host4}:18798/", 3)
                if allowed
                else reachable(xns, f"http://{host4}:18798/", 2)
            )
            assert got == allowed, (
                f"seed {seed} step {step} ({op}): firewall-host port reachable={got}, ufw allows={allowed}"
            )


# Answers each connection with the client address of its PROXY v2 header (or "none").
PROXY_ECHO = """
import socket, ipaddress
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('', 8000)); s.listen(16)
while True:
    c, _ = s.accept()
    head = c.recv(16, socket.MSG_WAITALL)
    who = b'none'
    if head[:12] == b'\\r\\n\\r\\n\\x00\\r\\nQUIT\\n' and head[13] == 0x11:
        body = c.recv(int.from_bytes(head[14:16], 'big'), socket.MSG_WAITALL)
        who = str(ipaddress.IPv4Address(body[:4])).encode()
    c.sendall(who + b'\\n'); c.close()
"""


def test_firewall_host_passes_the_client_address_with_proxy_protocol() -> None:
    with host_namespace() as h:
        xns, xaddr, host4 = h.external()
        h.pw(
            "run",
            "-d",
            "--firewall",
            "host",
            "--proxy-protocol",
            "--name",
            f"fw{secrets.token_hex(3)}",
            "-p",
            "18799:8000",
            "--",
            "python3",
            "-c",
            PROXY_ECHO,
        )
        deadline = time.monotonic() + 10
        out = ""
        while time.monotonic() < deadline and not out:
            p = subprocess.run(
                ["ip", "netns", "exec", xns, "nc", "-w", "2", host4, "18799"],
                input="hi\n",
                capture_output=True,
                text=True,
                timeout=10,
            )
            out = p.stdout.strip()
            time.sleep(0.2)
        assert out == xaddr, f"the sandbox saw {out!r}, not the external client {xaddr}"
