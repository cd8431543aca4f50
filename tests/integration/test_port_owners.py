"""Port ownership on the real host: a host port has at most one owner, and unpublish never removes
another owner's nftables element.

Issue 18 (item 2): reservations set SO_REUSEADDR, which on UDP let a second sandbox, or a host
program that set it too, bind the same port; allocate() took a successful bind as "free".
Issue 18 (item 4): unpublish deleted elements by key after reading the table, so a key another
owner published in between was deleted too.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pwutil import (
    bridge_ports,
    free_port,
    inspect,
    netns_names,
    nft_owner_elements,
    ps_json,
    pw,
    temp_network,
    uniq,
)

from conftest import sh
from portwright.errors import PortInUse
from portwright.firewall import nft, rules
from portwright.model import Mapping
from portwright.publish.base import Bound, Target, allocate
from portwright.publish.reserve import bind_socket
from portwright.spec import parse_publish

pytestmark = pytest.mark.integration

A = ipaddress.ip_address
TARGET = Target(ipaddress.IPv4Address("198.18.250.2"), ipaddress.IPv6Address("2001:2:fa::2"))
MODES = {"nat": True, "proxy": False}  # publish mode -> allocate(dual_stack=...)

HOLDER = r"""
import socket, sys
proto, host, port, opts = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
for o in opts:
    if o in ("SO_REUSEADDR", "SO_REUSEPORT"):
        s.setsockopt(socket.SOL_SOCKET, getattr(socket, o), 1)
if fam == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int("v6only" in opts))
s.bind((host, port))
if proto == "tcp":
    s.listen(8)
print("ready", flush=True)
sys.stdin.read()  # hold the port until the test closes our stdin
"""


@contextlib.contextmanager
def host_program(proto: str, host: str, port: int, *opts: str) -> Iterator[subprocess.Popen[str]]:
    """A host program holding host:port/proto with the given socket options, until the block ends."""
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, proto, host, str(port), ",".join(opts) or "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", (
            p.stderr.read() if p.stderr else ""
        )
        yield p
    finally:
        p.kill()
        p.wait(timeout=10)


def close(bound: Bound) -> None:
    for _, s in bound:
        if s is not None:
            s.close()


def udp_spec(port: int, host: str = "") -> list[Any]:
    return [parse_publish(f"{host + ':' if host else ''}{port}:5000/udp")]


# ------------------------------------------------------------------------------------------------
# (a) two reservations of one UDP port by the library
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first", MODES)
@pytest.mark.parametrize("second", MODES)
def test_second_udp_reservation_of_a_port_is_refused(first: str, second: str) -> None:
    port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
    held = allocate(udp_spec(port), TARGET, [], dual_stack=MODES[first])
    try:
        # Named from the host's sockets (no record given): the holder is this very process.
        with pytest.raises(PortInUse) as e:
            allocate(udp_spec(port), TARGET, [], dual_stack=MODES[second])
        assert f"{port}/udp" in str(e.value) and "pid " in str(e.value)
        # Named from the record when there is one.
        known = [("sandbox 'first' (0123456789ab)", m) for m, _ in held]
        with pytest.raises(PortInUse) as e:
            allocate(udp_spec(port, "127.0.0.1"), TARGET, known, dual_stack=MODES[second])
        assert "sandbox 'first' (0123456789ab)" in str(e.value)
    finally:
        close(held)
    close(allocate(udp_spec(port), TARGET, [], dual_stack=MODES[second]))  # free again once released


@pytest.mark.parametrize("opts", [("SO_REUSEADDR",), ("SO_REUSEPORT",), ("SO_REUSEADDR", "SO_REUSEPORT")])
def test_a_udp_reservation_is_exclusive(opts: tuple[str, ...]) -> None:
    port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
    s = bind_socket("udp", A("0.0.0.0"), port)
    try:
        for host in ("0.0.0.0", "127.0.0.1"):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                for o in opts:
                    other.setsockopt(socket.SOL_SOCKET, getattr(socket, o), 1)
                with pytest.raises(OSError) as e:
                    other.bind((host, port))
                assert e.value.errno == errno.EADDRINUSE
    finally:
        s.close()


# ------------------------------------------------------------------------------------------------
# (b), (c) host programs that share ports (SO_REUSEADDR on UDP, SO_REUSEPORT on TCP and UDP)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("proto", "opts"),
    [
        ("udp", ("SO_REUSEADDR",)),
        ("udp", ("SO_REUSEPORT",)),
        ("udp", ("SO_REUSEADDR", "SO_REUSEPORT")),
        ("tcp", ("SO_REUSEPORT",)),
        ("tcp", ("SO_REUSEADDR", "SO_REUSEPORT")),
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_a_port_a_sharing_host_program_holds_is_refused_naming_it(
    proto: str, opts: tuple[str, ...], mode: str
) -> None:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    port = free_port(socket.AF_INET, kind)
    with host_program(proto, "0.0.0.0", port, *opts) as prog:
        for host in ("", "127.0.0.1"):
            spec = [parse_publish(f"{host + ':' if host else ''}{port}:5000/{proto}")]
            with pytest.raises(PortInUse) as e:
                close(allocate(spec, TARGET, [], dual_stack=MODES[mode]))
            msg = str(e.value)
            assert f"pid {prog.pid} (python" in msg and f"0.0.0.0:{port}" in msg, msg
            assert "\n" not in msg


def test_dual_stack_and_v6_only_host_sockets_follow_the_one_clash_rule() -> None:
    port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
    with host_program("udp", "::", port, "SO_REUSEADDR") as prog:  # dual-stack [::]: holds IPv4 too
        with pytest.raises(PortInUse) as e:
            close(allocate(udp_spec(port, "127.0.0.1"), TARGET, [], dual_stack=False))
        assert f"pid {prog.pid} " in str(e.value)
    with host_program("udp", "::", port, "SO_REUSEADDR", "v6only"):  # v6-only [::]: IPv4 stays free
        close(allocate(udp_spec(port, "127.0.0.1"), TARGET, [], dual_stack=False))
        for dual in (True, False):
            with pytest.raises(PortInUse):
                close(allocate(udp_spec(port), TARGET, [], dual_stack=dual))


# ------------------------------------------------------------------------------------------------
# (d) through the CLI: two sandboxes on one UDP host port
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def network() -> Iterator[str]:
    with temp_network("--ipv6", prefix="own") as name:
        yield name


def _run(network: str, name: str, mode: str, port: int) -> subprocess.CompletedProcess[str]:
    return pw(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "--publish-mode",
        mode,
        "-p",
        f"{port}:5000/udp",
        "--",
        "sleep",
        "300",
        check=False,
    )


@pytest.mark.parametrize(
    ("first", "second"), [("proxy", "proxy"), ("proxy", "nat"), ("nat", "nat"), ("nat", "proxy")]
)
def test_cli_second_sandbox_on_a_udp_port_fails_in_one_line_and_leaves_nothing(
    network: str, first: str, second: str
) -> None:
    port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
    one, two = uniq("own"), uniq("own")
    try:
        r = _run(network, one, first, port)
        assert r.returncode == 0, r.stderr
        ports_before = bridge_ports(network)
        r = _run(network, two, second, port)
        assert r.returncode != 0, f"a second sandbox took {port}/udp: {r.stdout}"
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"{port}/udp" in lines[0] and one in lines[0], lines[0]  # names the owning sandbox
        # Nothing of the second sandbox is left: no record, namespace, veth or nft element.
        names = [rec["Names"] for rec in ps_json("-a")]
        assert two not in names and f"pw-{two}" not in netns_names()
        assert bridge_ports(network) == ports_before
        owners = {
            p.owner for p in rules.published(nft.table_json()) if p.proto == "udp" and p.host_port == port
        }
        if first == "nat":
            one_id = inspect(one)["Id"]
            assert owners == {f"pw:{one_id}"} and nft_owner_elements(f"pw:{one_id}")
        else:
            assert owners == set()
    finally:
        for name in (one, two):
            pw("rm", "-f", name, check=False)


# ------------------------------------------------------------------------------------------------
# Issue 18 item 4: unpublish reads the table, then deletes elements by key
# ------------------------------------------------------------------------------------------------

KEY_A = Mapping("tcp", A("0.0.0.0"), 18080, A("198.18.250.2"), 80)
KEY_B = Mapping("tcp", A("0.0.0.0"), 18080, A("198.18.250.3"), 80)  # the same map key, another sandbox


@pytest.fixture
def fw_ns() -> Iterator[str]:
    """A throwaway namespace with its own ``inet portwright`` table (the host's is never touched)."""
    ns = f"pwt-own-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", ns)
    try:
        nft.ensure_base(netns=ns)
        yield ns
    finally:
        sh("ip", "netns", "del", ns, check=False)


def _elements(ns: str) -> list[tuple[str | None, str]]:
    """(owner, target address) of every publish-map element in ns's table."""
    return [(p.owner, str(p.container_ip)) for p in rules.published(nft.table_json(netns=ns))]


def _locked_waiter_or_done(t: threading.Thread) -> str:
    """Wait until thread t (of this process) either finished or is blocked on nft's table lock."""
    ino = f":{os.stat(nft.TABLE_LOCK).st_ino} "
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not t.is_alive():
            return "done"
        with open("/proc/locks") as f:
            if any("->" in line and f" {os.getpid()} " in line and ino in line for line in f):
                return "waiting"
        time.sleep(0.01)
    raise AssertionError("the racing thread neither finished nor waited for the table lock")


def _race_after_first_read(monkeypatch: pytest.MonkeyPatch, ns: str, action: Any) -> dict[str, Any]:
    """Run ``action`` in another thread right after the main thread's next table read, and let it
    get as far as it can (to the end, or blocked on the table lock) before the main thread goes on."""
    real = nft.table_json
    main = threading.get_ident()
    result: dict[str, Any] = {}

    def racer() -> None:
        try:
            result["value"] = action()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            result["error"] = e

    def hooked(*, netns: str | None = None) -> dict[str, Any]:
        table = real(netns=netns)
        if threading.get_ident() == main and "thread" not in result:
            t = threading.Thread(target=racer)
            result["thread"] = t
            t.start()
            result["state"] = _locked_waiter_or_done(t)
        return table

    monkeypatch.setattr(nft, "table_json", hooked)
    return result


def test_unpublish_never_deletes_an_element_another_owner_published_meanwhile(
    fw_ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nft.publish("pw:aaaaaaaaaaaa", [KEY_A], netns=fw_ns, flush_udp=False)

    def other_process() -> None:
        # Another process unpublishes A too (rm -f racing the supervisor, or two reconciles),
        # and a new sandbox B, handed the port A's reservation gave up, publishes the same key.
        nft.unpublish("pw:aaaaaaaaaaaa", netns=fw_ns)
        nft.publish("pw:bbbbbbbbbbbb", [KEY_B], netns=fw_ns, flush_udp=False)

    race = _race_after_first_read(monkeypatch, fw_ns, other_process)
    nft.unpublish("pw:aaaaaaaaaaaa", netns=fw_ns)  # reads A's keys, then the other process runs
    race["thread"].join(timeout=60)
    assert "error" not in race, race.get("error")
    assert _elements(fw_ns) == [("pw:bbbbbbbbbbbb", "198.18.250.3")]  # B's element survived
    assert race["state"] == "waiting"  # because it had to wait for our read-and-delete to finish


def test_concurrent_unpublish_of_one_owner_is_not_an_error(
    fw_ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nft.publish("pw:aaaaaaaaaaaa", [KEY_A], netns=fw_ns, flush_udp=False)
    race = _race_after_first_read(monkeypatch, fw_ns, lambda: nft.unpublish("pw:aaaaaaaaaaaa", netns=fw_ns))
    nft.unpublish("pw:aaaaaaaaaaaa", netns=fw_ns)  # deleting keys the other one removed failed (ENOENT)
    race["thread"].join(timeout=60)
    assert "error" not in race, race.get("error")
    assert _elements(fw_ns) == []


def test_concurrent_publish_of_one_key_names_the_owner(fw_ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    race = _race_after_first_read(
        monkeypatch, fw_ns, lambda: nft.publish("pw:bbbbbbbbbbbb", [KEY_B], netns=fw_ns, flush_udp=False)
    )
    nft.publish("pw:aaaaaaaaaaaa", [KEY_A], netns=fw_ns, flush_udp=False)  # found no clash, then adds
    race["thread"].join(timeout=60)
    # The loser is told who holds the port (not an nft "File exists"), and the winner keeps it.
    assert isinstance(race.get("error"), PortInUse) and "pw:aaaaaaaaaaaa" in str(race["error"]), race
    assert _elements(fw_ns) == [("pw:aaaaaaaaaaaa", "198.18.250.2")]
