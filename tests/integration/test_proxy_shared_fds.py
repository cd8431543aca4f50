"""The shared relay and whatever descriptor a waiter's caller leaves on fd 4 (issue 15).

The waiter hands its fd 4 to the relay whenever fd 4 is open; it is dockerd's listening socket
only with ``-use-listen-fd``. Before the fix the relay wrapped any such descriptor in a socket
object first: a pipe on fd 4 (a caller's leftover) made the registration raise ENOTSOCK, the
waiter never got an answer (its port was never published, "the shared relay did not answer")
and the relay kept the connection open forever. Now a stray fd 4 is closed and ignored, and
``-use-listen-fd`` with something that is not a socket gets one line back.
"""

from __future__ import annotations

import array
import os
import socket
import subprocess

from proxynet import free_port
from test_proxy_shared import Lab, _relay_pids, echo, echo_server, flags, lab  # noqa: F401 (fixture)

from portwright.proxy import shared


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_stray_fd4_that_is_not_a_socket_is_ignored(lab: Lab) -> None:  # noqa: F811
    with echo_server() as b:
        port = free_port()
        r, w = os.pipe()
        try:
            p, status = _spawn_with_fd4(lab, r, *flags("tcp", "127.0.0.1", port, b))
        finally:
            os.close(r)
            os.close(w)
        assert status == b"0\n", status
        assert echo(port, b"x" * 1000) == b"x" * 1000 + b"|ok"
        assert p.poll() is None


def test_use_listen_fd_with_a_non_socket_is_refused_in_one_line(lab: Lab) -> None:  # noqa: F811
    with echo_server() as b:
        first = free_port()
        _, status = lab.spawn(*flags("tcp", "127.0.0.1", first, b))  # starts the relay
        assert status == b"0\n"
        relay = shared.query(lab.dir)["pid"]
        before = _fd_count(relay)
        sock_path = os.path.join(lab.dir, "relay.sock")
        r, w = os.pipe()
        try:
            for _ in range(5):
                msg = b"PWW1\0" + b"\0".join(a.encode() for a in flags("tcp", "127.0.0.1", free_port(), b))
                msg += b"\0-use-listen-fd\0"
                with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as c:
                    c.settimeout(5)
                    c.connect(sock_path)
                    c.sendmsg(
                        [msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]).tobytes())]
                    )
                    answer = c.recv(4096)
                    assert answer.startswith(b"1\nbad arguments: -use-listen-fd: fd 4 is not a socket"), (
                        answer
                    )
                    assert c.recv(4096) == b""  # and closed
        finally:
            os.close(r)
            os.close(w)
        assert _fd_count(relay) <= before  # nothing leaked, nothing registered
        assert len(shared.query(lab.dir)["ports"]) == 1
        assert echo(first, b"still") == b"still|ok"


def _spawn_with_fd4(lab: Lab, fd4: int, *args: str) -> tuple[subprocess.Popen[bytes], bytes]:  # noqa: F811
    """Like Lab.spawn, with ``fd4`` (any descriptor) on fd 4 and no -use-listen-fd."""
    r, w = os.pipe()

    def child() -> None:
        os.dup2(w, 3)
        os.dup2(fd4, 4)
        os.set_inheritable(3, True)
        os.set_inheritable(4, True)

    p = subprocess.Popen([lab.bin, *args], preexec_fn=child, close_fds=False, stdin=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        status = f.read()
    lab.waiters.append(p)
    return p, status
