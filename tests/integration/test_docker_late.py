"""dockerd started *after* portwright's sandboxes: their supervisors restore the DOCKER-USER accept
rules by themselves, so traffic that dockerd's FORWARD DROP policy would cut keeps flowing without
anyone running a portwright command."""

from __future__ import annotations

import subprocess
import time

import pytest
from pwutil import dockerd_with_forward_drop, inspect, pw, temp_network, uniq, wait_tcp

pytestmark = [pytest.mark.integration, pytest.mark.docker]


def test_supervisors_resync_docker_user_after_dockerd_starts() -> None:
    with temp_network(prefix="late") as net:
        a, b = uniq("a"), uniq("b")
        pw("run", "-d", "--name", a, "--network", net, "--", "sleep", "120")
        pw("run", "-d", "--name", b, "--network", net, "--", "python3", "-m", "http.server", "8000")
        ip_b = inspect(b)["NetworkSettings"]["IPAddress"]
        wait_tcp(f"pw-{a}", ip_b, 8000)
        with dockerd_with_forward_drop():
            # No portwright command runs from here on until traffic flows again.
            deadline = time.time() + 30
            ok = False
            while time.time() < deadline and not ok:
                ok = (
                    subprocess.run(
                        ["ip", "netns", "exec", f"pw-{a}", "nc", "-z", "-w", "1", ip_b, "8000"],
                        capture_output=True,
                    ).returncode
                    == 0
                )
                time.sleep(0.5)
            rules = subprocess.run(["iptables", "-S", "DOCKER-USER"], capture_output=True, text=True).stdout
            assert ok, f"sandbox-to-sandbox traffic stayed blocked; DOCKER-USER:\n{rules}"
            assert "portwright" in rules
