"""portwright-proxy honours docker-proxy's process contract (fd 3 status pipe, fd 4, signals)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from proxynet import Backend, backend_ns, free_port, wait_until

from conftest import sh

PROXY = [sys.executable, "-m", "portwright.proxy.dockerproxy"]


@pytest.fixture
def be() -> Iterator[Backend]:
    with backend_ns() as b:
        yield b


def spawn(args: list[str], listen: socket.socket | None = None) -> tuple[subprocess.Popen[bytes], bytes]:
    """Start the proxy as dockerd does; returns it and everything it wrote to fd 3."""
    r, w = os.pipe()
    lfd = listen.fileno() if listen is not None else -1

    def child() -> None:
        os.dup2(w, 3)
        if lfd >= 0:
            os.dup2(lfd, 4)

    p = subprocess.Popen(
        [*PROXY, *args], close_fds=False, preexec_fn=child, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    os.close(w)
    with os.fdopen(r, "rb") as f:
        status = f.read()  # read to EOF: proves the proxy closed fd 3
    return p, status


def flags(proto: str, host_ip: str, port: int, cip: object, cport: int) -> list[str]:
    return [
        "-proto",
        proto,
        "-host-ip",
        host_ip,
        "-host-port",
        str(port),
        "-container-ip",
        str(cip),
        "-container-port",
        str(cport),
    ]


def stop(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    p.send_signal(sig)
    rc = p.wait(timeout=10)
    if p.stderr:
        p.stderr.close()
    return rc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ready_then_relays_then_exits_0(be: Backend, sig: int) -> None:
    be.tcp_server(7100)
    port = free_port()
    p, status = spawn(flags("tcp", "0.0.0.0", port, be.ip4, 7100))
    try:
        assert status == b"0\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"abc")
            c.shutdown(socket.SHUT_WR)
            assert c.recv(100) + c.recv(100) == b"abcEOF 3\n"
        owner = sh("ss", "-Hltnp", f"sport = :{port}").stdout
        assert "portwright-prox" in owner and f"pid={p.pid}" in owner
    finally:
        assert stop(p, sig) == 0


def test_udp_and_ipv6_to_ipv4_container(be: Backend) -> None:
    be.udp_server(7101)
    port = free_port(kind=socket.SOCK_DGRAM)
    p, status = spawn(flags("udp", "::", port, be.ip4, 7101))
    try:
        assert status == b"0\n"
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            u.sendto(b"dgram", ("::1", port))
            assert u.recv(100) == b"dgram"
    finally:
        assert stop(p) == 0


def test_port_in_use_reports_1_and_message(be: Backend) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", port))
        holder.listen()
        p, status = spawn(flags("tcp", "0.0.0.0", port, be.ip4, 80))
        assert p.wait(timeout=10) == 1
        assert status.startswith(b"1\n")
        msg = status[2:].decode()
        assert f"listen tcp 0.0.0.0:{port}: bind: address already in use" in msg
        assert str(os.getpid()) in msg  # the owner is named
        assert p.stderr is not None
        p.stderr.close()


def test_use_listen_fd_adopts_the_bound_socket(be: Backend) -> None:
    be.tcp_server(7102)
    be.udp_server(7103)
    port = free_port()
    with socket.socket() as ls, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as us:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", port))
        ls.listen(128)
        us.bind(("127.0.0.1", port))
        pt, st_t = spawn([*flags("tcp", "127.0.0.1", port, be.ip4, 7102), "-use-listen-fd"], listen=ls)
        pu, st_u = spawn([*flags("udp", "127.0.0.1", port, be.ip4, 7103), "-use-listen-fd"], listen=us)
    # our copies are closed: the port now lives only in the proxies
    try:
        assert st_t == b"0\n" and st_u == b"0\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"fd4")
            c.shutdown(socket.SHUT_WR)
            assert c.recv(100) + c.recv(100) == b"fd4EOF 3\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            u.sendto(b"fd4", ("127.0.0.1", port))
            assert u.recv(100) == b"fd4"
    finally:
        assert stop(pt) == 0
        assert stop(pu) == 0


def test_bad_flag_exits_2_without_status() -> None:
    p, status = spawn(["-proto", "tcp", "-frobnicate"])
    assert p.wait(timeout=10) == 2
    assert status == b""
    assert p.stderr is not None
    assert b"flag provided but not defined: -frobnicate" in p.stderr.read()
    p.stderr.close()


def test_sctp_without_kernel_support_is_a_clear_failure(be: Backend) -> None:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132).close()
        pytest.skip("this kernel supports SCTP; the failure path is not reachable")
    except OSError:
        pass
    p, status = spawn(flags("sctp", "0.0.0.0", free_port(), be.ip4, 80))
    assert p.wait(timeout=10) == 1
    assert status.startswith(b"1\n") and b"SCTP" in status
    assert p.stderr is not None
    p.stderr.close()


def test_stops_cleanly_while_connections_are_open(be: Backend) -> None:
    be.tcp_server(7104)
    port = free_port()
    p, status = spawn(flags("tcp", "127.0.0.1", port, be.ip4, 7104))
    assert status == b"0\n"
    conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    try:
        assert wait_until(
            lambda: (
                len(sh("ss", "-Htn", "state", "established", f"dport = :{port}").stdout.splitlines()) == 20
            )
        )
        assert stop(p) == 0
        for c in conns:
            c.settimeout(5)
            try:
                assert c.recv(10) == b""
            except ConnectionResetError:
                pass
    finally:
        for c in conns:
            c.close()
