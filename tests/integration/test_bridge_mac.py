"""The gateway's MAC never changes under the sandboxes: removing one sandbox must not cut the
others off from the gateway (DNS, egress) until their neighbour caches go stale."""

from __future__ import annotations

import json
import subprocess

import pytest
from pwutil import pw, temp_network, uniq

pytestmark = pytest.mark.integration


def _mac(dev: str) -> str:
    return str(
        json.loads(
            subprocess.run(
                ["ip", "-j", "link", "show", dev], capture_output=True, text=True, check=True
            ).stdout
        )[0]["address"]
    )


def test_removing_a_sandbox_keeps_the_gateway_reachable_from_the_others() -> None:
    with temp_network() as net:
        doc = json.loads(pw("network", "inspect", net).stdout)[0]
        bridge, gw = doc["Bridge"], doc["IPAM"]["Config"][0]["Gateway"]
        before = _mac(bridge)
        a, b = uniq("ma"), uniq("mb")
        for n in (a, b):
            pw("run", "-d", "--name", n, "--network", net, "--", "sleep", "300")
        # a learns the gateway's MAC now, while b's port is on the bridge.
        subprocess.run(
            ["ip", "netns", "exec", f"pw-{a}", "ping", "-c1", "-W2", gw], check=True, capture_output=True
        )
        pw("rm", "-f", b)
        assert _mac(bridge) == before
        r = subprocess.run(
            ["ip", "netns", "exec", f"pw-{a}", "ping", "-c1", "-W2", gw], capture_output=True, text=True
        )
        assert r.returncode == 0, f"sandbox {a} lost the gateway after {b} was removed: {r.stdout}"
