"""The proxy publisher's data plane with real sockets and real clients.

A backend namespace (tests/integration/proxynet.py) runs the servers; the proxy runs in this
process (as the supervisor runs it) and listens on host addresses; clients are this process, curl,
and the ``external`` namespace that plays another machine.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from proxynet import Backend, backend_ns, echo, free_port, wait_until

from conftest import External, sh
from portwright.errors import PortInUse
from portwright.model import Mapping
from portwright.proxy.server import ProxyServer

ip = ipaddress.ip_address


@pytest.fixture
def be() -> Iterator[Backend]:
    with backend_ns() as b:
        yield b


def M(proto: str, host: str, port: int, cip: object, cport: int) -> Mapping:
    return Mapping(proto, ip(host), port, ip(str(cip)), cport)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend_v6", [False, True], ids=["to-v4-backend", "to-v6-backend"])
def test_tcp_v4_and_v6_listeners_from_host_and_external(
    be: Backend, external: External, backend_v6: bool
) -> None:
    be.tcp_server(7000, v6=backend_v6)
    cip = be.ip6 if backend_v6 else be.ip4
    p = free_port()
    maps = [M("tcp", "0.0.0.0", p, cip, 7000), M("tcp", "::", p, cip, 7000)]
    with ProxyServer(maps):
        for host in ("127.0.0.1", "::1", str(be.host4), str(be.host6)):
            assert echo(p, b"hello", host) == b"helloEOF 5\n", host
        for host in (f"{external.host4}", f"[{external.host6}]"):
            r = external.run("sh", "-c", f"printf abc | nc -N {host.strip('[]')} {p}")
            assert r.stdout == "abcEOF 3\n"


def test_curl_through_specific_addresses(be: Backend, external: External) -> None:
    d = tempfile.mkdtemp(prefix="pwt-www-")
    try:
        with open(os.path.join(d, "index.html"), "w") as f:
            f.write("served from the sandbox\n")
        be.popen("busybox", "httpd", "-f", "-p", "8080", "-h", d)
        assert wait_until(
            lambda: sh("ip", "netns", "exec", be.ns, "ss", "-Hltn", "sport = :8080").stdout.strip()
        )
        p = free_port()
        maps = [
            M("tcp", "127.0.0.1", p, be.ip4, 8080),
            M("tcp", "::1", p, be.ip4, 8080),
            M("tcp", str(external.host4), p, be.ip4, 8080),
        ]
        with ProxyServer(maps):
            for url in (f"http://127.0.0.1:{p}/", f"http://[::1]:{p}/", f"http://localhost:{p}/"):
                assert sh("curl", "-sS", "--max-time", "5", url).stdout == "served from the sandbox\n"
            r = external.run("curl", "-sS", "--max-time", "5", f"http://{external.host4}:{p}/")
            assert r.stdout == "served from the sandbox\n"
            # a loopback-only binding is not reachable from another machine
            bad = external.run("curl", "-sS", "--max-time", "3", f"http://{external.host6}:{p}/", check=False)
            assert bad.returncode != 0
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_half_close_client_still_reads_reply(be: Backend) -> None:
    be.tcp_server(7001)
    p = free_port()
    with ProxyServer([M("tcp", "127.0.0.1", p, be.ip4, 7001)]):
        with socket.create_connection(("127.0.0.1", p), timeout=5) as c:
            data = os.urandom(3 << 20)
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)  # "I am done sending" - the reply must still come
            got = bytearray()
            while chunk := c.recv(1 << 16):
                got += chunk
        assert bytes(got[: len(data)]) == data
        assert bytes(got[len(data) :]) == f"EOF {len(data)}\n".encode()


def test_reset_when_backend_is_down(be: Backend) -> None:
    p = free_port()
    with ProxyServer([M("tcp", "127.0.0.1", p, be.ip4, 7999)]) as srv:  # nothing listens on 7999
        # A clean b"" (EOF) would be the Docker #38682 behaviour. On loopback the reset can even
        # overtake connect()'s return.
        assert _outcome("127.0.0.1", p) == "reset"
        r = sh("curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{p}/", check=False)
        # 56 "Connection reset by peer" or 7 (reset before connect returned); never 52 "Empty reply"
        assert r.returncode in (7, 56), r.stderr
        assert wait_until(lambda: srv.stats()[f"127.0.0.1:{p}->7999/tcp"]["errors"] >= 2)


def _outcome(host: str, port: int) -> str:
    try:
        c = socket.create_connection((host, port), timeout=5)
    except ConnectionResetError:
        return "reset"
    with c:
        try:
            c.sendall(b"x")
            data = c.recv(10)
        except ConnectionResetError:
            return "reset"
    return f"clean EOF {data!r}"


def test_proxy_protocol_header_reaches_backend(be: Backend, external: External) -> None:
    be.tcp_server(7002, proxy_protocol=True)
    be.udp_server(7003, proxy_protocol=True)
    p = free_port()
    maps = [
        M("tcp", "0.0.0.0", p, be.ip4, 7002),
        M("tcp", "::", p, be.ip4, 7002),
        M("udp", "0.0.0.0", p, be.ip4, 7003),
    ]
    with ProxyServer(maps, proxy_protocol=True):
        out = external.run("sh", "-c", f"printf hi | nc -N {external.host4} {p}").stdout
        info = json.loads(out.splitlines()[0])
        assert info["src"][0] == str(external.addr4)  # the real client, not the proxy
        assert info["dst"] == [str(external.host4), p]
        assert info["peer"][0] == str(be.host4)  # the TCP peer is the proxy itself
        assert out.splitlines()[1:] == ["hiEOF 2"]
        out6 = external.run("sh", "-c", f"printf hi | nc -N {external.host6} {p}").stdout
        info6 = json.loads(out6.splitlines()[0])
        assert info6["src"][0] == str(external.addr6) and info6["dst"] == [str(external.host6), p]
        r = external.run("sh", "-c", f"printf 12345 | nc -u -w 2 {external.host4} {p}", check=False)
        u = json.loads(r.stdout.splitlines()[0])
        assert u["src"][0] == str(external.addr4) and u["dst"] == [str(external.host4), p]
        assert u["len"] == 5


def test_udp_64k_datagrams_both_families(be: Backend) -> None:
    be.udp_server(7004)
    be.udp_server(7005, v6=True)
    p = free_port(kind=socket.SOCK_DGRAM)
    maps = [M("udp", "127.0.0.1", p, be.ip4, 7004), M("udp", "::1", p, be.ip6, 7005)]
    with ProxyServer(maps) as srv:
        for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(fam, socket.SOCK_DGRAM) as u:
                u.settimeout(5)
                u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                big = os.urandom(65507)
                u.sendto(big, (host, p))
                assert u.recv(65535) == big
        # counters are bumped right after the send, so the client may be a little faster
        assert wait_until(lambda: srv.stats()[f"127.0.0.1:{p}->7004/udp"]["bytes_in"] == 65507)
        assert wait_until(lambda: srv.stats()[f"[::1]:{p}->7005/udp"]["bytes_out"] == 65507)


def test_udp_reply_leaves_from_the_address_the_client_used(be: Backend, external: External) -> None:
    be.udp_server(7006)
    p = free_port(kind=socket.SOCK_DGRAM)
    maps = [M("udp", "0.0.0.0", p, be.ip4, 7006), M("udp", "::", p, be.ip4, 7006)]
    with ProxyServer(maps):
        # 127.0.0.2 is a local address that is nobody's default source: without IP_PKTINFO the
        # reply would come from 127.0.0.1 and a connected client would never see it.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            u.connect(("127.0.0.2", p))
            u.send(b"where")
            assert u.recv(100) == b"where"
        # from another machine to a host address that is not on the interface it arrives on
        for dst in (str(be.host4), str(be.host6)):
            code = (
                "import socket,sys;fam=socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET;"
                "u=socket.socket(fam,socket.SOCK_DGRAM);u.settimeout(5);"
                "u.connect((sys.argv[1],int(sys.argv[2])));u.send(b'x'*1000);print(len(u.recv(2000)))"
            )
            r = external.run("python3", "-c", code, dst, str(p))
            assert r.stdout.strip() == "1000", dst


def test_udp_backend_that_is_not_up_yet(be: Backend) -> None:
    p = free_port(kind=socket.SOCK_DGRAM)
    with ProxyServer([M("udp", "127.0.0.1", p, be.ip4, 7007)], udp_idle_timeout=1.5) as srv:
        key = f"127.0.0.1:{p}->7007/udp"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(0.3)
            u.sendto(b"early", ("127.0.0.1", p))
            assert wait_until(lambda: srv.stats()[key]["bytes_in"] == 5)
            u.sendto(b"early2", ("127.0.0.1", p))  # draws the ECONNREFUSED from the first one
            be.udp_server(7007)
            u.settimeout(5)
            got = None
            for _ in range(20):
                u.sendto(b"late", ("127.0.0.1", p))
                try:
                    got = u.recv(100)
                    break
                except TimeoutError:
                    continue
            assert got == b"late"
            st = srv.stats()[key]
            assert st["udp_flows"] == 1 and st["errors"] >= 1
            # the flow expires after the idle timeout
            assert wait_until(lambda: srv.stats()[key]["udp_flows"] == 0, timeout=5)


def test_counters_move(be: Backend) -> None:
    be.tcp_server(7008)
    p = free_port()
    with ProxyServer([M("tcp", "127.0.0.1", p, be.ip4, 7008)]) as srv:
        key = f"127.0.0.1:{p}->7008/tcp"
        assert srv.stats()[key] == {
            "active": 0,
            "total": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "udp_flows": 0,
            "errors": 0,
            "udp_dropped": 0,
            "abandoned": 0,
            "connect_timeouts": 0,
        }
        held = [socket.create_connection(("127.0.0.1", p), timeout=5) for _ in range(3)]
        assert wait_until(lambda: srv.stats()[key]["active"] == 3)
        for c in held:
            c.sendall(b"12345")
            assert c.recv(5) == b"12345"
            c.close()
        assert echo(p, b"x" * 1000) == b"x" * 1000 + b"EOF 1000\n"
        assert wait_until(lambda: srv.stats()[key]["active"] == 0)
        st = srv.stats()[key]
        assert st["total"] == 4 and st["bytes_in"] == 1015
        # each closed connection also got the server's "EOF 5\n" before the proxy closed it
        assert st["bytes_out"] == 15 + 3 * len(b"EOF 5\n") + 1000 + len(b"EOF 1000\n")


def test_port_in_use_names_the_owner_and_leaves_nothing(be: Backend) -> None:
    p = free_port()
    q = free_port()
    holder = subprocess.Popen(
        [
            "python3",
            "-c",
            f"import socket,time;s=socket.socket();"
            f"s.bind(('127.0.0.1',{q}));s.listen();print('up',flush=True);time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        srv = ProxyServer([M("tcp", "127.0.0.1", p, be.ip4, 80), M("tcp", "127.0.0.1", q, be.ip4, 80)])
        with pytest.raises(PortInUse) as ei:
            srv.start()
        msg = str(ei.value)
        assert f"127.0.0.1:{q}/tcp" in msg and "already in use" in msg
        assert str(holder.pid) in msg  # names the owner
        # the first listener it had opened was closed again
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
        srv.stop()
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_backpressure_holds_bounded_bytes_without_spinning(be: Backend) -> None:
    # a backend that accepts and never reads
    be.start(
        "import socket,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        "s.bind((HOST,PORT));s.listen();print('ready',flush=True)\nc,_=s.accept();time.sleep(120)\n",
        "0.0.0.0",
        7009,
    )
    p = free_port()
    r, w = os.pipe()
    proxy = subprocess.Popen(
        [
            os.path.join(os.path.dirname(shutil.which("python3") or ""), "python3"),
            "-m",
            "portwright.proxy.dockerproxy",
            "-host-ip",
            "127.0.0.1",
            "-host-port",
            str(p),
            "-container-ip",
            str(be.ip4),
            "-container-port",
            "7009",
        ],
        close_fds=False,
        preexec_fn=lambda: os.dup2(w, 3),
        env={**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "..", "src")},
    )
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            assert f.read() == b"0\n"
        with socket.create_connection(("127.0.0.1", p), timeout=5) as c:
            c.setblocking(False)
            sent = 0
            chunk = b"z" * 65536
            stalled_since = None
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    sent += c.send(chunk)
                    stalled_since = None
                except BlockingIOError:
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > 1.0:
                        break
                    time.sleep(0.01)
            assert stalled_since is not None, "the sender was never slowed down"
            # everything in flight fits in socket buffers plus one pipe: bounded, not unbounded
            assert sent < 64 << 20
            t0 = _cpu_ticks(proxy.pid)
            time.sleep(1.0)
            assert _cpu_ticks(proxy.pid) - t0 <= 5  # <= 5% of a CPU: no busy loop while stalled
    finally:
        proxy.terminate()
        assert proxy.wait(timeout=10) == 0


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (clock ticks, 100/s)


def _attach_drop_all(s: socket.socket) -> object:
    """Attach a classic BPF "drop everything" filter, as a port reservation socket has."""
    import ctypes

    class SockFilter(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_uint16),
            ("jt", ctypes.c_uint8),
            ("jf", ctypes.c_uint8),
            ("k", ctypes.c_uint32),
        ]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]

    prog_insns = (SockFilter * 1)(SockFilter(0x06, 0, 0, 0))  # BPF_RET | BPF_K, 0: drop
    prog = SockFprog(1, prog_insns)
    s.setsockopt(socket.SOL_SOCKET, 26, bytes(ctypes.string_at(ctypes.addressof(prog), ctypes.sizeof(prog))))
    return prog_insns  # keep the instructions alive while the kernel copies them


def test_adopts_reservation_sockets_even_with_a_drop_filter(be: Backend) -> None:
    be.tcp_server(7010)
    be.udp_server(7011)
    p = free_port()
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("127.0.0.1", p))
    t.listen(16)
    u.bind(("127.0.0.1", p))
    keep = (_attach_drop_all(t), _attach_drop_all(u))
    maps = {M("tcp", "127.0.0.1", p, be.ip4, 7010): t, M("udp", "127.0.0.1", p, be.ip4, 7011): u}
    with ProxyServer(list(maps), sockets=maps):
        assert echo(p, b"adopted") == b"adoptedEOF 7\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            c.sendto(b"adopted", ("127.0.0.1", p))
            assert c.recv(100) == b"adopted"
    assert keep
    assert t.fileno() == -1 and u.fileno() == -1  # the server owned and closed them
