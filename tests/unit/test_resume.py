"""``start`` asks for the host ports it had (resume.py, and allocate's ``prefer``) without root:
ports drawn at random come back while free, a taken one is drawn again and said in one line, and
``ps``/``inspect`` show StartedAt/FinishedAt as Docker does."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import socket

from test_cliformat import NOW, _rec

from portwright import cliformat, resume
from portwright.model import Mapping
from portwright.publish.base import Target, allocate
from portwright.spec import parse_publish

A = ipaddress.ip_address
LOOP = Target(ipaddress.IPv4Address("127.0.0.1"), None)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _free_run(n: int) -> list[int]:
    """n consecutive ports that are free now (tried from a random start)."""
    for _ in range(200):
        base = random.randrange(20000, 30000)
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return list(range(base, base + n))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no run of free ports")


def _close(bound: list[tuple[Mapping, socket.socket | None]]) -> None:
    for _, s in bound:
        if s is not None:
            s.close()


def test_last_ports_round_trip_and_bad_entries_skipped() -> None:
    m = Mapping("tcp", A("127.0.0.1"), 40001, A("198.18.0.2"), 80)
    kept = resume.last_ports([m])
    assert kept == [["tcp", "127.0.0.1", 80, 40001]]
    assert resume.preferred([*kept, ["x"], None, ["udp", "::", "eighty", 1]]) == {
        ("tcp", "127.0.0.1", 80): 40001
    }  # type: ignore[list-item]
    assert resume.preferred(None) == {}


def test_random_host_ports_come_back_while_free() -> None:
    first = allocate([parse_publish("127.0.0.1::80"), parse_publish("127.0.0.1::81/udp")], LOOP, [], False)
    before = resume.preferred(resume.last_ports(m for m, _ in first))
    _close(first)
    again = allocate(
        [parse_publish("127.0.0.1::80"), parse_publish("127.0.0.1::81/udp")], LOOP, [], False, prefer=before
    )
    try:
        assert [m.host_port for m, _ in again] == [m.host_port for m, _ in first]
        assert resume.moved(before, (m for m, _ in again)) == []
    finally:
        _close(again)


def test_a_taken_port_is_drawn_again_and_said_once() -> None:
    lo, hi = _free_ports(2)
    lo, hi = min(lo, hi), max(lo, hi)
    spec = parse_publish(f"127.0.0.1:{lo}-{hi}:80")  # a range with a random host side
    before = {("tcp", "127.0.0.1", 80): hi}
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", hi))
    squatter.listen()
    try:
        bound = allocate([spec], LOOP, [], False, prefer=before)
        try:
            assert [m.host_port for m, _ in bound] == [lo]
            changes = resume.moved(before, (m for m, _ in bound))
            assert changes == [f"80/tcp 127.0.0.1:{hi} -> {lo}"]
            note = resume.moved_note("web", changes)
            assert note is not None and "\n" not in note and str(hi) in note and str(lo) in note
        finally:
            _close(bound)
    finally:
        squatter.close()
    assert resume.moved_note("web", []) is None


def test_a_preferred_port_outside_the_request_is_ignored() -> None:
    (port,) = _free_ports(1)
    bound = allocate(
        [parse_publish(f"127.0.0.1:{port}:80")], LOOP, [], False, prefer={("tcp", "127.0.0.1", 80): 1}
    )
    try:
        assert [m.host_port for m, _ in bound] == [port]
    finally:
        _close(bound)


def test_up_counts_from_started_and_inspect_has_started_and_finished_at() -> None:
    rec = dataclasses.replace(_rec(created=NOW - 3600), started=NOW - 3)
    assert cliformat.status_text(rec, NOW) == "Up 3 seconds"  # `start` keeps Created
    state = cliformat.inspect_doc(rec, None)["State"]
    assert state["StartedAt"] == cliformat.rfc3339(NOW - 3)
    assert state["FinishedAt"] == "0001-01-01T00:00:00Z"  # Go's zero time, as Docker prints "never"
    done = dataclasses.replace(rec, status="exited", exit_code=0, finished=NOW - 180)
    assert cliformat.status_text(done, NOW) == "Exited (0) 3 minutes ago"
    assert cliformat.inspect_doc(done, None)["State"]["FinishedAt"] == cliformat.rfc3339(NOW - 180)
    assert cliformat.inspect_doc(done, None)["Created"] == cliformat.rfc3339(NOW - 3600)


def test_a_port_drawn_again_keeps_off_the_other_mappings_old_ports() -> None:
    a, b, c = _free_run(3)
    spec = parse_publish(f"127.0.0.1:{a}-{c}:80")
    other = parse_publish(f"127.0.0.1:{a}-{c}:81")
    before = {("tcp", "127.0.0.1", 80): a, ("tcp", "127.0.0.1", 81): b}
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", a))
    squatter.listen()
    try:
        bound = allocate([spec, other], LOOP, [], False, prefer=before)
        try:  # 80 must not take b, which 81 had and gets back
            assert [m.host_port for m, _ in bound] == [c, b]
        finally:
            _close(bound)
    finally:
        squatter.close()
