"""The proxy's layers: server -> loop -> relays -> counters, binding through the kernel sockets
module, and no import of the publishers (which import the proxy). Read with ``ast``; plus the
server's ``alive()`` contract and counters summed over several loops, on loopback without root."""

from __future__ import annotations

import ast
import ipaddress
import socket
from pathlib import Path

from tests.unit.loopproxy import tcp_backend, wait_until

from portwright.kernel import sockets
from portwright.model import Mapping
from portwright.proxy import counters
from portwright.proxy.server import ProxyServer
from portwright.publish import reserve

PROXY = Path(__file__).resolve().parents[2] / "src" / "portwright" / "proxy"


def _imports(path: Path) -> set[str]:
    """Modules a file imports at run time (TYPE_CHECKING blocks left out), relative ones as '.x'."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            skip |= {s.lineno for c in n.body for s in ast.walk(c) if hasattr(s, "lineno")}
    out: set[str] = set()
    for n in ast.walk(tree):
        if getattr(n, "lineno", None) in skip:
            continue
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            out.add("." * n.level + (n.module or ""))
    return out


def test_no_proxy_module_imports_the_publishers() -> None:
    offenders = {f.name: sorted(i for i in _imports(f) if "publish" in i) for f in PROXY.glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_loop_and_counters_have_modules_of_their_own_below_the_server() -> None:
    loop, ctrs = _imports(PROXY / "loop.py"), _imports(PROXY / "counters.py")
    assert ".server" not in loop and ".udp" not in loop
    assert not {i for i in ctrs if i.startswith(".")}, "counters import nothing of ours"
    for relay in ("tcp.py", "udp.py"):
        assert ".server" not in _imports(PROXY / relay)


def test_one_bind_recipe_for_reservations_and_listeners() -> None:
    assert reserve.bind_socket is sockets.bind_socket
    s = sockets.bind_socket("udp", ipaddress.ip_address("127.0.0.1"), 0)
    try:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0  # exclusive on UDP
    finally:
        s.close()
    s = sockets.bind_socket("tcp", ipaddress.ip_address("::1"), 0)
    try:
        assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    finally:
        s.close()


def test_alive_is_true_only_between_start_and_stop() -> None:
    with tcp_backend() as b:
        lip = ipaddress.ip_address("127.0.0.1")
        s = sockets.bind_socket("tcp", lip, 0)
        m = Mapping("tcp", lip, s.getsockname()[1], lip, b.getsockname()[1])
        srv = ProxyServer([m], sockets={m: s}, loops=2)
        assert not srv.alive()
        srv.start()
        try:
            assert srv.alive()
        finally:
            srv.stop()
        assert not srv.alive() and not srv.healthy()


def test_stats_add_up_the_counters_of_every_loop() -> None:
    with tcp_backend() as b:
        lip = ipaddress.ip_address("127.0.0.1")
        s = sockets.bind_socket("tcp", lip, 0)
        port = s.getsockname()[1]
        m = Mapping("tcp", lip, port, lip, b.getsockname()[1])
        with ProxyServer([m], sockets={m: s}, loops=2) as srv:
            clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
            try:
                assert wait_until(lambda: srv.stats()[m.docker_format()]["total"] == 6)
                st = srv.stats()[m.docker_format()]
                assert set(st) == set(counters.COUNTER_NAMES)
                assert st["active"] >= 1
            finally:
                for c in clients:
                    c.close()


def test_counter_totals_are_slot_wise_sums() -> None:
    a, b = counters.new_counters(), counters.new_counters()
    a[counters.TOTAL], b[counters.TOTAL], b[counters.BYTES_IN] = 2, 3, 7
    tot = counters.total([a, b])
    assert tot["total"] == 5 and tot["bytes_in"] == 7 and tot["errors"] == 0
    assert list(tot) == list(counters.COUNTER_NAMES)
