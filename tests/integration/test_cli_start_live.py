"""``start`` as Docker's (issue 17): it keeps ``Created``, ``inspect`` has ``State.StartedAt``
and ``State.FinishedAt`` (RFC 3339) and ``ps`` counts "Up" from the last start; a host port
drawn at random at the first run (``-p IP::80``, ``-P``) comes back where still free, and only a
port taken meanwhile is drawn again, said in one line."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator

import pytest
from proxynet import wait_until
from pwutil import curl, inspect, ps_json, pw, temp_network, uniq, wait_tcp

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def net() -> Iterator[str]:
    with temp_network(prefix="st") as n:
        yield n


def _host_ports(name: str) -> dict[str, int]:
    return {k: int(v[0]["HostPort"]) for k, v in inspect(name)["NetworkSettings"]["Ports"].items() if v}


def _stop(name: str) -> None:
    pw("stop", "-t", "1", name)
    assert wait_until(lambda: inspect(name)["State"]["Status"] == "exited")


def _web(net: str) -> str:
    name = uniq("st")
    web = f"exec {sys.executable} -m http.server --bind 0.0.0.0 8000"
    flags = ["-p", "127.0.0.1::8000", "--expose", "9000", "-P"]  # both host ports drawn at random
    pw("run", "-d", "--name", name, "--network", net, *flags, "--", "sh", "-c", web)
    wait_tcp(None, inspect(name)["NetworkSettings"]["IPAddress"], 8000)
    return name


def test_start_keeps_created_and_its_random_ports(net: str) -> None:
    name = _web(net)
    try:
        first = inspect(name)
        ports = _host_ports(name)
        assert set(ports) == {"8000/tcp", "9000/tcp"}
        assert first["State"]["FinishedAt"] == "0001-01-01T00:00:00Z"
        _stop(name)
        stopped = inspect(name)["State"]
        assert stopped["FinishedAt"] > stopped["StartedAt"] == first["State"]["StartedAt"]
        time.sleep(1.1)  # so a new StartedAt and "Up" differ from the old ones at second resolution
        start = pw("start", name)
        assert start.stdout == f"{name}\n" and "drew another" not in start.stderr
        again = inspect(name)
        assert again["Created"] == first["Created"]  # `start` keeps Created, as Docker
        assert again["State"]["StartedAt"] > stopped["FinishedAt"]
        assert _host_ports(name) == ports  # the random host ports came back
        row = next(r for r in ps_json() if r["Names"] == name)
        assert row["Status"].startswith("Up ") and "second" in row["Status"]
        wait_tcp(None, again["NetworkSettings"]["IPAddress"], 8000)
        assert "Directory listing" in curl(f"http://127.0.0.1:{ports['8000/tcp']}/")
    finally:
        pw("rm", "-f", name, check=False)


def test_a_port_taken_meanwhile_is_drawn_again_and_said(net: str) -> None:
    name = _web(net)
    squatter = socket.socket()
    try:
        ports = _host_ports(name)
        _stop(name)
        squatter.bind(("127.0.0.1", ports["8000/tcp"]))
        squatter.listen()
        start = pw("start", name)
        notes = [line for line in start.stderr.splitlines() if "drew another" in line]
        assert len(notes) == 1 and str(ports["8000/tcp"]) in notes[0], start.stderr
        now = _host_ports(name)
        assert now["8000/tcp"] != ports["8000/tcp"] and now["9000/tcp"] == ports["9000/tcp"]
        wait_tcp(None, inspect(name)["NetworkSettings"]["IPAddress"], 8000)
        assert "Directory listing" in curl(f"http://127.0.0.1:{now['8000/tcp']}/")
    finally:
        squatter.close()
        pw("rm", "-f", name, check=False)
