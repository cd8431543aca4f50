"""Forwarding: upstreams from resolv.conf (systemd-resolved's stub replaced by its real list), and
the non-blocking Forwarder against upstreams on loopback: an answer relayed under the client's ID,
a spoofed or mismatched one ignored, retry on the next upstream, SERVFAIL when all are dead."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import dns.message
import dns.rcode
import pytest

from portwright.dns.forward import Forwarder, choose, parse_servers

RESOLV = """# generated
search example.test
nameserver 127.0.0.53
nameserver fe80::1%eth0
nameserver not-an-ip
options edns0
"""


def test_parse_and_choose() -> None:
    assert parse_servers(RESOLV) == ["127.0.0.53", "fe80::1"]
    stub_only = "nameserver 127.0.0.53\n"
    assert choose(stub_only, "nameserver 127.0.0.2\nnameserver ::1\n", set()) == ["127.0.0.2", "::1"]
    assert choose(stub_only, None, set()) == ["127.0.0.53"]  # reachable from the host side
    assert choose("nameserver 198.18.0.1\nnameserver 127.0.0.9\n", None, {"198.18.0.1"}) == ["127.0.0.9"]


@pytest.fixture
def upstream() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2)
    yield s
    s.close()


def _pump(fw: Forwarder, until: float) -> None:
    while time.monotonic() < until and fw.pending:
        for s in fw.socks.values():
            fw.on_readable(s)
        fw.expire(time.monotonic())
        time.sleep(0.005)


def test_relays_answer_under_client_id(upstream: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    port = upstream.getsockname()[1]
    monkeypatch.setattr("portwright.dns.forward.PORT", port)
    fw = Forwarder(["127.0.0.1"], timeout=1.0)
    fw.open()
    got: list[bytes] = []
    q = dns.message.make_query("example.test.", "A")
    fw.submit(q, got.append, time.monotonic())
    data, src = upstream.recvfrom(4096)
    upq = dns.message.from_wire(data)
    assert upq.question == q.question
    wrong = dns.message.make_response(dns.message.make_query("other.test.", "A"))
    wrong.id = upq.id
    upstream.sendto(wrong.to_wire(), src)  # same ID, another question: ignored
    r = dns.message.make_response(upq)
    r.answer.append(dns.rrset.from_text("example.test.", 5, "IN", "A", "198.18.9.9"))
    upstream.sendto(r.to_wire(), src)
    _pump(fw, time.monotonic() + 2)
    assert len(got) == 1
    ans = dns.message.from_wire(got[0])
    assert ans.id == q.id and ans.answer[0][0].to_text() == "198.18.9.9"
    fw.close()


def test_dead_upstreams_get_servfail_after_retries(
    upstream: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("portwright.dns.forward.PORT", upstream.getsockname()[1])
    fw = Forwarder(["127.0.0.1", "127.0.0.1"], timeout=0.1, attempts=2)
    fw.open()
    got: list[bytes] = []
    q = dns.message.make_query("example.test.", "A")
    t0 = time.monotonic()
    fw.submit(q, got.append, t0)
    _pump(fw, t0 + 2)
    assert len(got) == 1 and dns.message.from_wire(got[0]).rcode() == dns.rcode.SERVFAIL
    assert dns.message.from_wire(got[0]).id == q.id
    seen = [dns.message.from_wire(upstream.recvfrom(4096)[0]).id for _ in range(2)]
    assert len(set(seen)) == 2  # each try under a fresh ID
    fw.close()


def test_no_upstream_is_servfail_at_once() -> None:
    fw = Forwarder([])
    got: list[bytes] = []
    fw.submit(dns.message.make_query("example.test.", "A"), got.append, time.monotonic())
    assert dns.message.from_wire(got[0]).rcode() == dns.rcode.SERVFAIL
