"""The shared relay and its tiny waiters, driven as dockerd drives docker-proxy (issue 15).

Each test builds the waiter (gcc) for a throwaway relay directory and starts waiters with fd 3 as
the status pipe, exactly as dockerd does; the backends are loopback echo servers. Root is needed:
the relay serves only uid 0 (SO_PEERCRED). Whatever a test starts is stopped at its end, and the
relay exits by itself after its last port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from proxynet import burst, echo, echo_server, free_port, refused, wait_until

from portwright.proxy import shared, waiter

pytestmark = pytest.mark.integration


@dataclass
class Lab:
    dir: str
    bin: str
    waiters: list[subprocess.Popen[bytes]]

    def spawn(self, *args: str, listen: socket.socket | None = None) -> tuple[subprocess.Popen[bytes], bytes]:
        """Start a waiter the dockerd way; returns it and all it wrote to fd 3 (read to EOF)."""
        r, w = os.pipe()
        fds = {3: w} if listen is None else {3: w, 4: listen.fileno()}

        def child() -> None:
            for target, fd in fds.items():
                os.dup2(fd, target)
                os.set_inheritable(target, True)

        p = subprocess.Popen([self.bin, *args], preexec_fn=child, close_fds=False, stdin=subprocess.DEVNULL)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            status = f.read()
        self.waiters.append(p)
        return p, status


def flags(proto: str, host_ip: str, port: int, cport: int, cip: str = "127.0.0.1") -> list[str]:
    return [
        "-proto",
        proto,
        "-host-ip",
        host_ip,
        "-host-port",
        str(port),
        "-container-ip",
        cip,
        "-container-port",
        str(cport),
    ]


@pytest.fixture
def lab() -> Iterator[Lab]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (scripts/bootstrap.sh installs it)")
    d = tempfile.mkdtemp(prefix="pw-relay-")
    lab = Lab(os.path.join(d, "run"), os.path.join(d, "portwright-proxy"), [])
    waiter.build(lab.bin, directory=lab.dir)
    try:
        yield lab
    finally:
        for p in lab.waiters:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)
            if p.poll() is None:
                p.kill()
                p.wait()
        relay_gone = wait_until(lambda: not _relay_pids(lab.dir), timeout=10)
        for pid in _relay_pids(lab.dir):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)
        assert relay_gone, "the relay did not exit after its last port"


def _relay_pids(directory: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if b"portwright.proxy.shared" in cmd and directory.encode() in cmd:
                out.append(int(pid))
    return out


def test_waiters_register_relay_report_and_exit_0(lab: Lab) -> None:
    with echo_server() as b1, echo_server() as b2:
        first, last = free_port(), free_port()
        w1, st1 = lab.spawn(*flags("tcp", "0.0.0.0", first, b1))
        w2, st2 = lab.spawn(*flags("tcp", "127.0.0.1", last, b2))
        assert (st1, st2) == (b"0\n", b"0\n")
        assert echo(first, b"a" * 100_000) == b"a" * 100_000 + b"|ok"
        assert echo(last, b"zz") == b"zz|ok"
        st = shared.query(lab.dir)
        rows = {p["binding"]: p for p in st["ports"]}
        assert rows[f"0.0.0.0:{first}/tcp"]["container"] == f"127.0.0.1:{b1}"
        assert rows[f"0.0.0.0:{first}/tcp"]["waiter_pid"] == w1.pid
        assert rows[f"127.0.0.1:{last}/tcp"]["counters"]["total"] == 1
        owner = subprocess.run(["ss", "-Hltnp", f"sport = :{first}"], capture_output=True, text=True).stdout
        assert '"pw-relay"' in owner, owner  # ss -p names the relay
        w1.send_signal(signal.SIGTERM)
        assert w1.wait(timeout=5) == 0
        assert wait_until(lambda: refused(first), timeout=2)  # freed as soon as the waiter is gone
        assert echo(last, b"still") == b"still|ok"
        w2.send_signal(signal.SIGINT)
        assert w2.wait(timeout=5) == 0
        assert wait_until(lambda: not _relay_pids(lab.dir), timeout=10)  # exits with its last port
        assert not os.path.exists(os.path.join(lab.dir, "relay.sock"))


def test_address_in_use_and_bad_flags_are_reported_on_fd3(lab: Lab) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", port))
        holder.listen()
        p, status = lab.spawn(*flags("tcp", "0.0.0.0", port, 80))
        assert p.wait(timeout=10) == 1
        assert status.startswith(b"1\n"), status
        assert f"listen tcp 0.0.0.0:{port}: bind: address already in use".encode() in status
    p, status = lab.spawn("-proto", "tcp", "-host-port", "notanumber")
    assert p.wait(timeout=10) == 1
    assert status.startswith(b"1\nbad arguments: invalid value"), status


def test_use_listen_fd_and_udp(lab: Lab) -> None:
    with echo_server() as bt, echo_server("udp") as bu:
        port = free_port()
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", port))
        ls.listen(16)
        p, status = lab.spawn(*flags("tcp", "127.0.0.1", port, bt), "-use-listen-fd", listen=ls)
        ls.close()  # dockerd closes its copy; the relay's is the only one left
        assert status == b"0\n"
        assert echo(port, b"fd4") == b"fd4|ok"
        uport = free_port(kind=socket.SOCK_DGRAM)
        pu, status = lab.spawn(*flags("udp", "127.0.0.1", uport, bu))
        assert status == b"0\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            u.sendto(b"dgram", ("127.0.0.1", uport))
            assert u.recv(100) == b"dgram|ok"
        # the waiter holds no copy of the listening socket: only the relay and its workers do
        assert not any(
            os.readlink(f"/proc/{p.pid}/fd/{fd}").startswith("socket:") and fd == "4"
            for fd in os.listdir(f"/proc/{p.pid}/fd")
        )


def test_kill9_of_the_relay_leaves_no_half_alive_port_and_waiters_reregister(lab: Lab) -> None:
    with echo_server() as b:
        ports = [free_port() for _ in range(3)]
        for port in ports:
            _, status = lab.spawn(*flags("tcp", "0.0.0.0", port, b))
            assert status == b"0\n"
        st = shared.query(lab.dir)
        old = st["workers"]
        assert len(old) >= 2  # the relay and at least one worker (2 cores here)
        os.kill(st["pid"], signal.SIGKILL)
        assert wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in old), timeout=5)
        # From now on every port either refuses or serves; never accepts and drops.
        deadline = time.monotonic() + 10
        served = set()
        while time.monotonic() < deadline and len(served) < len(ports):
            for port in ports:
                try:
                    reply = echo(port, b"x")
                except ConnectionRefusedError:
                    continue
                assert reply == b"x|ok", (port, reply)
                served.add(port)
            time.sleep(0.05)
        assert served == set(ports), "the waiters did not hand their ports to a new relay"
        new = shared.query(lab.dir)
        assert new["pid"] not in old and len(new["ports"]) == len(ports)


def test_two_worker_processes_both_serve(lab: Lab) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the default is one process")
    with echo_server() as b:
        port = free_port()
        _, status = lab.spawn(*flags("tcp", "127.0.0.1", port, b))
        assert status == b"0\n"
        burst(port, b"q", threads=8, rounds=60)
        row = shared.query(lab.dir)["ports"][0]
        assert row["counters"]["total"] == 480
        assert len(row["by_process"]) >= 2 and all(n > 0 for n in row["by_process"]), row


def test_control_socket_refuses_non_root_and_bad_messages(lab: Lab) -> None:
    with echo_server() as b:
        port = free_port()
        _, status = lab.spawn(*flags("tcp", "127.0.0.1", port, b))
        assert status == b"0\n"
        sock_path = os.path.join(lab.dir, "relay.sock")
        assert os.stat(lab.dir).st_mode & 0o777 == 0o700
        assert os.stat(sock_path).st_mode & 0o777 == 0o600
        for msg, want in (
            (b"GET / HTTP/1.0\r\n\r\n", b"1\nbad request"),
            (b"PWW1\0-bogus\0", b"1\nbad arguments: flag provided but not defined: -bogus"),
        ):
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as c:
                c.settimeout(5)
                c.connect(sock_path)
                c.send(msg)
                assert c.recv(4096).startswith(want)
                assert c.recv(4096) == b""  # and the connection is closed
        # Past the file modes (opened up here on purpose), SO_PEERCRED still refuses other users.
        os.chmod(os.path.dirname(lab.dir), 0o755)
        os.chmod(lab.dir, 0o755)
        os.chmod(sock_path, 0o666)
        code = (
            "import os, socket\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); c.settimeout(5)\n"
            f"c.connect({sock_path!r}); c.send(b'PWW1\\0-proto\\0tcp\\0-host-port\\0{free_port()}\\0')\n"
            "print(c.recv(4096).decode())\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
        os.chmod(lab.dir, 0o700)
        assert out.stdout.startswith("1\npermission denied: uid 65534 is not root"), (out.stdout, out.stderr)
        assert len(shared.query(lab.dir)["ports"]) == 1  # nothing changed


def test_a_killed_worker_is_replaced_and_given_the_listeners(lab: Lab) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the default relay has no worker")
    with echo_server() as b:
        port = free_port()
        _, status = lab.spawn(*flags("tcp", "127.0.0.1", port, b))
        assert status == b"0\n"
        st = shared.query(lab.dir)
        relay, worker = st["workers"][0], st["workers"][1]
        os.kill(worker, signal.SIGKILL)
        assert wait_until(lambda: shared.query(lab.dir)["workers"][1] != worker, timeout=5)
        new = shared.query(lab.dir)
        assert new["pid"] == relay and os.path.exists(f"/proc/{new['workers'][1]}")
        burst(port, b"w", threads=8, rounds=60)
        row = shared.query(lab.dir)["ports"][0]
        assert row["by_process"][1] > 0, row  # the new worker serves the port it was handed
