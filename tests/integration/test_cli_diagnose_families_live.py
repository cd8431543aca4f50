"""Diagnostics blind spots of issue 17, with real sandboxes and real clients: a family that the
publication carries but that reaches nothing inside the sandbox (a v4-only server behind a
dual-stack proxy publication: curl to [::1] is reset), a 127.0.0.1-only publication, and the fix
line of an undeclared host-network listener (no ``-p``, which --network host cannot use)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from pwutil import free_port, inspect, pw, temp_network, uniq, wait_tcp

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def net() -> Iterator[str]:
    with temp_network("--ipv6", prefix="fm") as n:
        yield n


def _curl(url: str) -> int:
    return subprocess.run(["curl", "-sS", "-g", "--max-time", "5", "-o", "/dev/null", url]).returncode


def _findings(code: str, subject: str) -> list[dict[str, str]]:
    r = pw("audit", "--json", check=False)
    return [f for f in json.loads(r.stdout)["findings"] if f["code"] == code and f["subject"] == subject]


def _v4_only_server(net: str, port: int, *flags: str) -> str:
    name = uniq("fm")
    pw(
        "run", "-d", "--name", name, "--network", net, *flags, "-p", f"{port}:80",
        "--", sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "80",
    )  # fmt: skip
    wait_tcp(None, inspect(name)["NetworkSettings"]["IPAddress"], 80)
    return name


def test_a_family_that_reaches_nothing_inside_is_reported(net: str) -> None:
    port = free_port()
    name = _v4_only_server(net, port, "--publish-mode", "proxy")
    try:
        assert _curl(f"http://127.0.0.1:{port}/") == 0
        assert _curl(f"http://[::1]:{port}/") != 0  # relayed to the sandbox's IPv6 address: nothing there
        found = _findings("family-mismatch", f"tcp [::1]:{port}")
        assert found, pw("audit", check=False).stdout
        assert "nothing listens" in found[0]["message"] and name in found[0]["message"]
        assert "IPV6_V6ONLY" in found[0]["fix"] or "0.0.0.0" in found[0]["fix"]
        who = pw("who", str(port)).stdout
        assert "where nothing listens" in who, who  # a difference between the families, not silence
    finally:
        pw("rm", "-f", name, check=False)


def test_a_127_0_0_1_only_publication_is_a_family_mismatch(net: str) -> None:
    port = free_port()
    name = uniq("fm")
    pw(
        "run", "-d", "--name", name, "--network", net, "-p", f"127.0.0.1:{port}:80",
        "--", sys.executable, "-m", "http.server", "--bind", "::", "80",
    )  # fmt: skip
    try:
        wait_tcp(None, inspect(name)["NetworkSettings"]["IPAddress"], 80)
        assert _curl(f"http://127.0.0.1:{port}/") == 0 and _curl(f"http://[::1]:{port}/") != 0
        found = _findings("family-mismatch", f"tcp [::1]:{port}")
        assert found and found[0]["severity"] == "low", pw("audit", check=False).stdout
        assert f"[::1]:{port}" in found[0]["fix"]
    finally:
        pw("rm", "-f", name, check=False)


def test_undeclared_fix_says_what_host_networking_accepts() -> None:
    port, name = free_port(), uniq("fm")
    pw(
        "run", "-d", "--name", name, "--network", "host",
        "--", sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
    )  # fmt: skip
    try:
        wait_tcp(None, "127.0.0.1", port)
        found = _findings("undeclared", f"tcp 127.0.0.1:{port}")
        assert found, pw("audit", check=False).stdout
        assert f"--expose {port}/tcp" in found[0]["fix"] and "-p " not in found[0]["fix"]
    finally:
        pw("rm", "-f", name, check=False)
