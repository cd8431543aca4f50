"""Helpers for driving the real CLI from integration tests and checking what is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SERVERS = Path(__file__).parent / "servers"


def pw(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [sys.executable, "-m", "portwright", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )
    if check and p.returncode != 0:
        raise AssertionError(f"portwright {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@contextlib.contextmanager
def temp_network(*create_args: str, prefix: str = "n") -> Iterator[str]:
    """A portwright network for one test (or module): removed with every sandbox on it."""
    name = uniq(prefix)
    pw("network", "create", name, *create_args)
    try:
        yield name
    finally:
        for rec in ps_json("-a"):
            if rec["Networks"] == name:
                pw("rm", "-f", rec["Names"], check=False)
        pw("network", "rm", name, check=False)


def curl(url: str, ns: str | None = None, timeout: float = 5) -> str:
    """GET url with the real curl (optionally from inside netns ns); returns the body."""
    cmd = ["curl", "-sS", "-g", "--max-time", str(timeout), url]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5)
    if p.returncode != 0:
        raise AssertionError(
            f"curl {url}{' in ' + ns if ns else ''}: exit {p.returncode}: {p.stderr.strip()}"
        )
    return p.stdout


@contextlib.contextmanager
def dockerd_with_forward_drop() -> Iterator[Any]:
    """A real dockerd as a fresh Docker host has it: ip_forward was off, so dockerd turned it on
    and set the iptables FORWARD policy to DROP (and loaded br_netfilter)."""
    from dockerutil import dockerd_running

    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("0")
    try:
        with dockerd_running() as d:
            policy = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
            if "-P FORWARD DROP" not in policy:  # a dockerd that kept ACCEPT: impose Docker's usual DROP
                subprocess.run(["iptables", "-P", "FORWARD", "DROP"], check=True)
            yield d
    finally:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")


def inspect(name: str) -> dict[str, Any]:
    """The sandbox's inspect document (``inspect`` prints a JSON array, as Docker's)."""
    docs = json.loads(pw("inspect", name).stdout)
    assert isinstance(docs, list) and len(docs) == 1, docs
    return docs[0]  # type: ignore[no-any-return]


def ps_json(*flags: str) -> list[dict[str, Any]]:
    """``ps --format json`` rows: one JSON object per line, as ``docker ps --format json``."""
    out = pw("ps", *flags, "--format", "json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def uniq(prefix: str = "t") -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def netns_names() -> set[str]:
    """portwright's namespaces (pw-NAME); other tools' namespaces may come and go meanwhile."""
    try:
        return {n for n in os.listdir("/run/netns") if n.startswith("pw-")}
    except FileNotFoundError:
        return set()


def link_names() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out) if link["ifname"].startswith(("pw-", "pwv"))}


def port_is_free(port: int) -> bool:
    """Nothing holds port right now: TCP and UDP, IPv4 and IPv6."""
    try:
        for fam, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(fam, kind) as t:
                    if fam == socket.AF_INET6:
                        t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    t.bind((host, port))
    except OSError:
        return False
    return True


def within(seconds: float, probe: Callable[[], object]) -> bool:
    """Whether ``probe()`` turns true within ``seconds`` (asked every 0.1 s, and once more at the
    deadline, so a slow probe still gets its last chance)."""
    deadline = time.monotonic() + seconds
    while True:
        if probe():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


_handed_out: set[int] = set()


def free_port(family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel hands out that is free in both families and for both TCP and UDP, and
    that this process was not given before: once the probe socket closes, the kernel's bind(0)
    readily hands out the same port again (seen: 50001 four times in twelve calls), so a test
    asking for twelve ports before binding any got the same one twice."""
    for _ in range(200):
        with socket.socket(family, kind) as s:
            s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out and port_is_free(port):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found")


def docker_user_rules(interface: str) -> list[str]:
    """The DOCKER-USER rules (iptables and ip6tables, ``-S`` form) that name ``interface``;
    empty where the chain does not exist (no dockerd)."""
    out = []
    for tool in ("iptables", "ip6tables"):
        r = subprocess.run([tool, "-w", "10", "-S", "DOCKER-USER"], capture_output=True, text=True)
        out += [ln for ln in r.stdout.splitlines() if r.returncode == 0 and f" {interface} " in f"{ln} "]
    return out


def bridge_ports(network: str) -> set[str]:
    """The interfaces enslaved to a portwright network's bridge (its sandboxes' veths)."""
    nets = json.loads(pw("network", "inspect", network).stdout)
    out = subprocess.run(
        ["ip", "-j", "link", "show", "master", nets[0]["Bridge"]], capture_output=True, text=True, check=True
    ).stdout
    return {link["ifname"] for link in json.loads(out or "[]")}


def nft_owner_elements(owner: str) -> list[Any]:
    p = subprocess.run(["nft", "-j", "list", "table", "inet", "portwright"], capture_output=True, text=True)
    if p.returncode != 0:
        return []
    found = []
    for obj in json.loads(p.stdout)["nftables"]:
        for kind in ("map", "set"):
            if kind in obj:
                for e in obj[kind].get("elem", []) or []:
                    if owner in json.dumps(e):
                        found.append(e)
        if "rule" in obj and owner in json.dumps(obj["rule"].get("comment", "")):
            found.append(obj["rule"])
    return found


def wait_tcp(ns: str | None, host: str, port: int, timeout: float = 10) -> None:
    """Wait until something accepts on host:port (optionally from inside netns ns)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        cmd = ["nc", "-z", "-w", "1", host, str(port)]
        if ns:
            cmd = ["ip", "netns", "exec", ns, *cmd]
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing accepted on {host}:{port} within {timeout}s")


def tcp_ask(host: str, port: int, line: str = "hi", timeout: float = 5) -> str:
    """Send a line, half-close, read everything: returns the server's full reply."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(line.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.decode()
