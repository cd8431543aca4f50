"""A private portwright for name-resolution tests: its own state directory, hosts file and upstream
resolv.conf (so its own resolver, started with them), and a cleanup that removes every sandbox,
network, fork server and resolver it made, even when the test failed."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pwstate
from portwright.dns.service import LiveDns
from portwright.zygote import stop_server


@dataclass
class DnsEnv:
    state: str
    hosts: str
    upstream_conf: str
    networks: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PORTWRIGHT_STATE_DIR": self.state,
            "PORTWRIGHT_HOSTS_FILE": self.hosts,
            "PORTWRIGHT_UPSTREAM_RESOLV_CONF": self.upstream_conf,
        }

    def pw(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [sys.executable, "-m", "portwright", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"portwright {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def network(self, *flags: str) -> str:
        name = "d" + secrets.token_hex(3)
        self.pw("network", "create", name, *flags)
        self.networks.append(name)
        return name

    def gateways(self, network: str) -> list[str]:
        doc = json.loads(self.pw("network", "inspect", network).stdout)[0]
        return [c["Gateway"] for c in doc["IPAM"]["Config"]]

    def sandbox(self, network: str, *flags: str, name: str | None = None) -> str:
        name = name or "s" + secrets.token_hex(3)
        for _ in range(3):
            p = self.pw(
                "run", "-d", "--name", name, "--network", network, *flags, "sleep", "600", check=False
            )
            # A checkout being edited while tests run changes the fork server's code token under it.
            if "keeps answering 'stale'" not in p.stderr:
                break
        assert p.returncode == 0, p.stderr
        return name

    def addresses(self, name: str) -> tuple[str, str]:
        doc = json.loads(self.pw("inspect", name).stdout)[0]["NetworkSettings"]
        return doc["IPAddress"], doc["GlobalIPv6Address"]

    def resolver(self) -> LiveDns:
        return LiveDns(self.state)

    def cleanup(self) -> None:
        with contextlib.suppress(OSError), open(os.path.join(self.state, "logs", "dns.log")) as f:
            print("dns.log:", f.read()[-4000:])  # shown when the test failed
        ps = subprocess.run(["ps", "-eo", "pid,etimes,args"], capture_output=True, text=True).stdout
        print("resolvers:", [ln for ln in ps.splitlines() if self.state in ln])
        ps = self.pw("ps", "-a", "--format", "json", check=False)
        rows = (
            [json.loads(line) for line in ps.stdout.splitlines() if line.strip()]
            if ps.returncode == 0
            else []
        )
        for rec in rows:  # one JSON object per line, as docker ps --format json
            self.pw("rm", "-f", rec.get("ID") or rec["Id"], check=False)
        for n in self.networks:
            self.pw("network", "rm", n, check=False)
        stop_server(self.state)
        pid = self.resolver().pid()
        self.resolver().stop()
        deadline = time.monotonic() + 5
        while pid is not None and time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            if pid is not None and os.path.exists(f"/proc/{pid}"):
                os.kill(pid, 9)


@contextlib.contextmanager
def dns_env() -> Iterator[DnsEnv]:
    root = tempfile.mkdtemp(prefix="pw-dns-test-")
    pwstate.register(os.path.join(root, "state"))
    env = DnsEnv(
        state=os.path.join(root, "state"),
        hosts=os.path.join(root, "hosts"),
        upstream_conf=os.path.join(root, "upstream-resolv.conf"),
    )
    with open(env.hosts, "w") as f:
        f.write("127.0.0.1\tlocalhost\n")
    try:
        yield env
    finally:
        env.cleanup()
        pwstate.discard(env.state)  # its ebpf pins outlive the directory
        shutil.rmtree(root, ignore_errors=True)


def dig(ns: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """The real dig inside pw-NS, with the sandbox's resolv.conf (ip netns exec mounts it)."""
    return subprocess.run(
        # Two tries, as a stub resolver makes.
        ["ip", "netns", "exec", f"pw-{ns}", "dig", "+time=3", "+tries=2", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def short(ns: str, *args: str) -> list[str]:
    return sorted(dig(ns, "+short", *args).stdout.split())


def status(ns: str, *args: str) -> str:
    """The rcode dig reports (NOERROR, NXDOMAIN, SERVFAIL, REFUSED ...)."""
    out = dig(ns, *args).stdout
    for line in out.splitlines():
        if "status:" in line:
            return line.split("status:")[1].split(",")[0].strip()
    return "no answer: " + out[-200:]


def in_net(addr: str, net: str) -> bool:
    return ipaddress.ip_address(addr) in ipaddress.ip_network(net)
