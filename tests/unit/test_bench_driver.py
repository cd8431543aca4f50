"""The bench's process driver (``run``, ``spawn``, ``Child``) and the docker-proxy contract it
drives: a process reports ready with "0\\n" on fd 3. Runs real programs on loopback, no root."""

from __future__ import annotations

import os
import socket
import sys
import threading

import pytest

from portwright.bench import dockerpeer, driver


def test_run_captures_output_and_status() -> None:
    d = driver.run(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"]
    )
    assert (d.returncode, d.stdout, d.stderr.strip(), d.ok, d.timed_out) == (3, "out\n", "err", False, False)
    assert d.why() == "err"
    assert driver.run(["cat"], input="fed").stdout == "fed"


def test_run_reports_a_timeout_and_keeps_what_was_printed() -> None:
    d = driver.run(
        [sys.executable, "-u", "-c", "import time; print('early', flush=True); time.sleep(30)"], timeout=1.5
    )
    assert d.timed_out and d.returncode == -1 and not d.ok
    assert "timed out after" in d.stderr


def test_version_of_a_missing_program() -> None:
    assert driver.version_of(["/nonexistent/portwright-test-tool", "--version"]) == "missing"


def test_spawn_hands_the_readiness_pipe_as_fd_3_and_stop_kills_a_stubborn_child() -> None:
    r, w = os.pipe()
    child = driver.spawn(["sh", "-c", "trap '' TERM; echo 0 >&3; exec 3>&-; sleep 30"], ready_fd=w)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            assert f.readline() == b"0\n"
        assert child.running
        assert child.stop(timeout=0.5) is True  # it ignored SIGTERM: killed
        assert not child.running
    finally:
        child.stop(timeout=0)


def _echo_backend() -> tuple[socket.socket, threading.Thread]:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)

    def serve() -> None:
        try:
            c, _ = ls.accept()
        except OSError:
            return
        with c:
            c.sendall(c.recv(100))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return ls, t


def test_the_drop_in_is_started_the_dockerd_way_and_relays() -> None:
    if dockerpeer.dropin_available():
        pytest.skip(str(dockerpeer.dropin_available()))
    ls, t = _echo_backend()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dp = dockerpeer.DockerProxy(dockerpeer.DROPIN)
    try:
        assert dp.binary.endswith("portwright-proxy") and dp.name == "portwright-proxy"
        dp.start("127.0.0.1", port, "127.0.0.1", ls.getsockname()[1])
        # One waiter per port, plus the shared relay and its workers (their memory is its cost).
        relay = dockerpeer.dropin_relay_pids()
        assert len(dp.procs) == 1 and relay and set(dp.pids) == {dp.procs[0].pid, *relay}
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"ping")
            assert c.recv(100) == b"ping"
    finally:
        assert dp.stop() == []
        ls.close()
    assert dp.pids == []


def test_a_drop_in_that_cannot_bind_reports_why() -> None:
    if dockerpeer.dropin_available():
        pytest.skip(str(dockerpeer.dropin_available()))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        dp = dockerpeer.DockerProxy(dockerpeer.DROPIN)
        try:
            with pytest.raises(Exception) as e:
                dp.start("127.0.0.1", held.getsockname()[1], "127.0.0.1", 9)
            assert "portwright-proxy on port" in str(e.value)
        finally:
            dp.stop()


def test_docker_proxy_command_names_the_binary() -> None:
    assert dockerpeer.docker_proxy_command("0.0.0.0", 9000, "198.19.0.2", 80, "udp", "/x/pp")[:3] == [
        "/x/pp",
        "-proto",
        "udp",
    ]
