"""Debian's real dockerd driving portwright-proxy as its userland proxy (docker-proxy contract).

dockerd runs with ``--userland-proxy-path=<venv>/bin/portwright-proxy`` and ``--iptables=false``:
without Docker's DNAT rules every published connection, from anywhere, must pass through the
proxy (and a shared test machine keeps its FORWARD policy). Skipped, with dockerd's own error,
only where dockerd cannot start.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from dockerutil import HOST_TOOLS_MOUNTS, dockerd_running, ensure_image
from proxynet import free_port, wait_until

from conftest import sh

pytestmark = [pytest.mark.docker]

PROXY_BIN = os.path.join(os.path.dirname(sys.executable), "portwright-proxy")


def _listener_process(port: int) -> str:
    return sh("ss", "-Hltnp", f"sport = :{port}").stdout


def test_dockerd_uses_portwright_proxy_for_curl_iperf3_and_port_conflicts() -> None:
    if not os.path.exists(PROXY_BIN):
        pytest.skip(f"{PROXY_BIN} missing: pip install -e . in the venv")
    for tool in ("curl", "iperf3"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    with dockerd_running(f"--userland-proxy-path={PROXY_BIN}", "--userland-proxy=true", iptables=False) as d:
        img = ensure_image(d)
        web, perf, taken = free_port(), free_port(), free_port()
        d.docker(
            "run", "-d", "--name", "pwt-web", "-p", f"{web}:80", img, "httpd", "-f", "-p", "80", "-h", "/www"
        )
        d.docker(
            "run",
            "-d",
            "--name",
            "pwt-iperf",
            "-p",
            f"127.0.0.1:{perf}:5201",
            *HOST_TOOLS_MOUNTS,
            img,
            "/usr/bin/iperf3",
            "-s",
        )
        # dockerd started our binary with docker-proxy's flags
        kids = [argv for _, argv in d.children() if argv and "portwright-proxy" in " ".join(argv[:2])]
        assert any(
            ["-host-port", str(web)] == a[a.index("-host-port") : a.index("-host-port") + 2]
            for a in kids
            if "-host-port" in a
        ), kids
        assert "portwright-prox" in _listener_process(web)  # ss -p shows whose port it is
        for url in (f"http://127.0.0.1:{web}/", f"http://localhost:{web}/"):
            r = sh("curl", "-sS", "--max-time", "10", url)
            assert r.stdout == "hello from pwtest/busybox\n"
        # iperf3 needs its control connection and data streams through the proxy
        ok = wait_until(
            lambda: ":5201" in d.docker("exec", "pwt-iperf", "netstat", "-ltn", check=False).stdout,
            timeout=20,
            interval=0.2,
        )
        assert ok, "iperf3 never listened inside the container"
        res = json.loads(
            sh("iperf3", "-c", "127.0.0.1", "-p", str(perf), "-t", "2", "-P", "2", "-J", timeout=30).stdout
        )
        assert res["end"]["sum_received"]["bytes"] > 0
        res = json.loads(
            sh("iperf3", "-c", "127.0.0.1", "-p", str(perf), "-t", "2", "-R", "-J", timeout=30).stdout
        )
        assert res["end"]["sum_received"]["bytes"] > 0
        # A host port someone else holds: the docker user sees dockerd's usual error text.
        with socket.socket() as holder:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind(("0.0.0.0", taken))
            holder.listen()
            r = d.docker(
                "run",
                "-d",
                "--name",
                "pwt-clash",
                "-p",
                f"{taken}:80",
                img,
                "httpd",
                "-f",
                "-p",
                "80",
                check=False,
            )
            assert r.returncode != 0
            assert "Error starting userland proxy" in r.stderr, r.stderr
            assert "address already in use" in r.stderr, r.stderr
        # removing the container stops its proxy (dockerd sends SIGTERM; we exit 0)
        d.docker("rm", "-f", "pwt-web")
        assert wait_until(lambda: "portwright-prox" not in _listener_process(web), timeout=15)
        with pytest.raises(subprocess.CalledProcessError):
            sh("curl", "-sS", "--max-time", "3", f"http://127.0.0.1:{web}/")
