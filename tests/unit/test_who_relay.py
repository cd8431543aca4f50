"""``who`` on a port of the shared portwright-proxy relay names the container and the waiter
(issue 15): the relay's status query is parsed (relayview.parse_status) and matched to the
socket (relayview.for_listener); the relay's own process alone could not say it."""

from __future__ import annotations

from test_diagnose import DB, WEB, ip, ln, proc, snapshot

from portwright.diagnose.relayview import RelayPort, for_listener, is_relay, parse_status, relay_dir_of
from portwright.diagnose.snapshot import DOCKER_PROXY, PW_RELAY
from portwright.diagnose.who import render, who

RELAY = proc(
    7000, "pw-relay", "/usr/bin/python3 -I -m portwright.proxy.shared serve --dir /run/x --workers 0"
)
WORKER = proc(7001, "pw-relay-w1", RELAY.cmdline)

STATUS = {
    "pid": 7000,
    "workers": [7000, 7001],
    "ports": [
        {
            "binding": "127.0.0.1:6390/tcp",
            "container": "198.19.0.3:6379",
            "proto": "tcp",
            "host_ip": "127.0.0.1",
            "host_port": 6390,
            "container_ip": "198.19.0.3",
            "container_port": 6379,
            "waiter_pid": 7100,
        },
        {
            "binding": "[::]:6390/tcp",
            "container": "198.19.0.3:6379",
            "proto": "tcp",
            "host_ip": "::",
            "host_port": 6390,
            "container_ip": "198.19.0.3",
            "container_port": 6379,
            "waiter_pid": 7101,
        },
        {"binding": "broken", "waiter_pid": "x"},  # unreadable entries are skipped, not fatal
    ],
}


def test_parse_status_reads_each_registration() -> None:
    ports = parse_status(STATUS)
    assert [p.waiter_pid for p in ports] == [7100, 7101]
    assert ports[0] == RelayPort(7000, "tcp", ip("127.0.0.1"), 6390, ip("198.19.0.3"), 6379, 7100)


def test_for_listener_matches_the_address() -> None:
    ports = parse_status(STATUS)
    got6 = for_listener(ports, ln("tcp", "::", 6390, RELAY))
    got4 = for_listener(ports, ln("tcp", "127.0.0.1", 6390, RELAY))
    assert got6 is not None and got6.waiter_pid == 7101
    assert got4 is not None and got4.waiter_pid == 7100
    assert for_listener(ports, ln("udp", "127.0.0.1", 6390, RELAY)) is None
    assert for_listener(ports, ln("tcp", "127.0.0.1", 6391, RELAY)) is None


def test_relay_processes_and_their_directory() -> None:
    assert is_relay(RELAY) and is_relay(WORKER)
    assert not is_relay(proc(1, "python3", "python3 -m http.server"))
    assert relay_dir_of(RELAY.cmdline) == "/run/x"
    assert relay_dir_of("python3 -I -m portwright.proxy.shared serve") is None


def test_who_names_the_container_behind_a_relay_port() -> None:
    snap = snapshot("diagnose_docker_nat", [ln("tcp", "127.0.0.1", 6390, RELAY, WORKER)], [WEB, DB])
    snap.relay = parse_status(STATUS)
    rep = who(snap, 6390)
    h = rep.holders[0][1]
    assert h.kind == DOCKER_PROXY and h.container == "db" and h.waiter == 7100
    assert h.proxy_to == (ip("198.19.0.3"), 6379)
    text = render(rep)
    assert "container db" in text and "waiter pid 7100" in text and "pw-relay" in text


def test_who_relay_port_without_a_registration_still_says_relay() -> None:
    snap = snapshot("diagnose_docker_nat", [ln("tcp", "127.0.0.1", 6395, RELAY)], [WEB, DB])
    h = who(snap, 6395).holders[0][1]
    assert h.kind == PW_RELAY and h.container is None
