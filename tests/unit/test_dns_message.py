"""Queries in, decisions out (dnspython on both sides): A/AAAA/PTR answers, NODATA, NXDOMAIN in our
zone and subnets, forwarding of the rest, round-robin, truncation, and malformed input that gets
FORMERR or is dropped, never an exception (a seeded fuzz over mutated queries)."""

from __future__ import annotations

import ipaddress
import random

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from portwright.dns.message import Drop, Forward, Reply, decide, servfail
from portwright.dns.records import Entry, Table

NET4 = ipaddress.IPv4Network("198.18.0.0/24")
NET6 = ipaddress.IPv6Network("2001:2::/64")
SUBNETS = [NET4, NET6]


def _table(n: int = 2) -> Table:
    return Table.build(
        [Entry("n1", f"s{i}", ("shared",), NET4[i + 2], NET6[i + 2] if i == 0 else None) for i in range(n)]
    )


def _ask(
    name: str, rdtype: str = "A", table: Table | None = None, turn: int = 0, **kw: object
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    d = decide(q.to_wire(), table or _table(), "n1", SUBNETS, turn)
    assert isinstance(d, Reply), d
    r = dns.message.from_wire(d.wire)
    assert r.id == q.id and r.flags & dns.flags.QR
    return r


def _addrs(r: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in r.answer for rd in rrset]


def test_a_aaaa_and_nodata() -> None:
    assert _addrs(_ask("s0")) == ["198.18.0.2"]
    assert _addrs(_ask("S0.portwright.", "AAAA")) == ["2001:2::2"]
    r = _ask("s1", "AAAA")  # a name without an IPv6 address: NOERROR, empty
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.flags & dns.flags.AA
    assert _ask("s0", "MX").answer == []


def test_shared_alias_round_robin() -> None:
    firsts = {_addrs(_ask("shared", turn=t))[0] for t in range(4)}
    assert firsts == {"198.18.0.2", "198.18.0.3"}
    assert sorted(_addrs(_ask("shared", turn=7))) == ["198.18.0.2", "198.18.0.3"]


def test_ptr_and_reverse_nxdomain_inside_our_subnets() -> None:
    r = _ask("2.0.18.198.in-addr.arpa.", "PTR")
    assert _addrs(r) == ["s0.portwright."]
    assert _addrs(_ask(NET6[2].reverse_pointer + ".", "PTR")) == ["s0.portwright."]
    assert _ask("99.0.18.198.in-addr.arpa.", "PTR").rcode() == dns.rcode.NXDOMAIN
    q = dns.message.make_query("1.0.0.10.in-addr.arpa.", "PTR")
    assert isinstance(decide(q.to_wire(), _table(), "n1", SUBNETS), Forward)  # not ours


def test_other_networks_names_zone_and_forwarding() -> None:
    q = dns.message.make_query("s0", "A")
    assert isinstance(decide(q.to_wire(), _table(), "n2", []), Forward)  # not seen from n2
    assert _ask("nobody.portwright.").rcode() == dns.rcode.NXDOMAIN
    d = decide(dns.message.make_query("example.test.", "A").to_wire(), _table(), "n1", SUBNETS)
    assert isinstance(d, Forward) and d.query.question[0].name.to_text() == "example.test."
    fail = dns.message.from_wire(servfail(d.query))
    assert fail.rcode() == dns.rcode.SERVFAIL and fail.id == d.query.id


def test_truncation_over_udp_and_whole_over_tcp() -> None:
    big = _table(120)
    r = _ask("shared", table=big)  # no EDNS: 512 bytes is not enough for 120 addresses
    assert r.flags & dns.flags.TC and not r.answer
    q = dns.message.make_query("shared", "A")
    d = decide(q.to_wire(), big, "n1", SUBNETS, tcp=True)
    assert isinstance(d, Reply) and len(_addrs(dns.message.from_wire(d.wire))) == 120


def test_malformed_queries() -> None:
    q = dns.message.make_query("s0", "A")
    wire = q.to_wire()
    assert isinstance(decide(b"", _table(), "n1", SUBNETS), Drop)
    r = decide(wire[:-3], _table(), "n1", SUBNETS)  # header intact, question cut
    assert isinstance(r, Reply) and dns.message.from_wire(r.wire).rcode() == dns.rcode.FORMERR
    response = bytearray(wire)
    response[2] |= 0x80  # QR: a response, never answered
    assert isinstance(decide(bytes(response), _table(), "n1", SUBNETS), Drop)
    notify = bytearray(wire)
    notify[2] = (notify[2] & 0x87) | (4 << 3)  # opcode NOTIFY
    r = decide(bytes(notify), _table(), "n1", SUBNETS)
    assert isinstance(r, Reply) and dns.message.from_wire(r.wire).rcode() == dns.rcode.NOTIMP


def test_fuzz_never_raises() -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    base = [
        dns.message.make_query(n, t).to_wire()
        for n in ("s0", "shared", "x.test")
        for t in ("A", "AAAA", "PTR")
    ]
    for _ in range(3000):
        b = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            if op < 0.5 and b:
                b[rng.randrange(len(b))] = rng.randrange(256)
            elif op < 0.75:
                del b[rng.randrange(len(b) + 1) :]
            else:
                b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
        d = decide(bytes(b), _table(), "n1", SUBNETS, rng.randrange(10))
        assert isinstance(d, Reply | Forward | Drop)
        if isinstance(d, Reply):
            dns.message.from_wire(d.wire)  # whatever we send parses
