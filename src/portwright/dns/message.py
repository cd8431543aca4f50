"""One DNS query in, one decision out: answer it from the table, forward it, or drop it. Pure.

Messages are parsed and built with dnspython; nothing here touches a socket. The server hands each
datagram (or TCP message) to ``decide`` with the network it arrived on, and acts on the result:
``Reply`` (send these bytes back), ``Forward`` (relay the parsed query upstream) or ``Drop``.

Rules: a message that does not parse gets FORMERR when its header is readable (else it is dropped);
a response (QR set) is dropped, never answered (no reflection loops); an opcode other than QUERY
gets NOTIMP. Names of the network's sandboxes answer A/AAAA (rotated by ``turn``: round-robin for a
shared alias), and other types NODATA; PTR for their addresses; names under ``.portwright`` and
reverse names inside the network's subnets that match nothing are NXDOMAIN here, never forwarded.
Everything else is forwarded. A UDP reply too big for the client's buffer is truncated (TC set).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from .records import Answer, Table, in_zone

TTL = 5  # seconds: short, since records change as sandboxes come and go (Docker answers 600)
UDP_PLAIN_SIZE = 512  # RFC 1035 4.2.1: the limit for a client without EDNS
OUR_PAYLOAD = 1232  # the EDNS buffer we advertise (DNS flag day 2020's value)
HEADER_LEN = 12


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes to send. ``cacheable``: an answer from the table, the same for the same query bytes
    (but the ID) until the table changes, in ``rotations`` forms (round-robin turns)."""

    wire: bytes
    cacheable: bool = False
    rotations: int = 1


@dataclass(frozen=True, slots=True)
class Forward:
    query: dns.message.Message


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


Decision = Reply | Forward | Drop
Subnet = ipaddress.IPv4Network | ipaddress.IPv6Network


def error_reply(wire: bytes, rcode: dns.rcode.Rcode) -> Decision:
    """An answer carrying only ``rcode`` for a message we could not (or will not) read."""
    if len(wire) < HEADER_LEN or wire[2] & 0x80:  # no header, or a response: never answer those
        return Drop("unreadable message" if len(wire) < HEADER_LEN else "a response, not a query")
    m = dns.message.Message(id=int.from_bytes(wire[:2], "big"))
    m.flags = dns.flags.QR | dns.flags.RA
    m.set_rcode(rcode)
    return Reply(m.to_wire())


def decide(
    wire: bytes, table: Table, network: str, subnets: Sequence[Subnet], turn: int = 0, tcp: bool = False
) -> Decision:
    """What to do with one query that arrived on ``network``'s resolver address."""
    try:
        q = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return error_reply(wire, dns.rcode.FORMERR)
    if q.flags & dns.flags.QR:
        return Drop("a response, not a query")
    if q.opcode() != dns.opcode.QUERY:
        return error_reply(wire, dns.rcode.NOTIMP)
    if len(q.question) != 1:
        return error_reply(wire, dns.rcode.FORMERR)
    qrr = q.question[0]
    if qrr.rdclass != dns.rdataclass.IN:
        return Reply(_finish(q, _response(q, dns.rcode.REFUSED), tcp), cacheable=True)
    qname = qrr.name.to_text()
    if qrr.rdtype == dns.rdatatype.PTR:
        ptr = _reverse(q, table, network, subnets, qname)
        if ptr is not None:
            return Reply(_finish(q, ptr, tcp), cacheable=True)
    found = table.lookup(network, qname)
    if found is not None:
        turns = max(len(found.v4), len(found.v6), 1)
        return Reply(_finish(q, _addresses(q, found, turn), tcp), cacheable=True, rotations=turns)
    if in_zone(qname):
        return Reply(_finish(q, _response(q, dns.rcode.NXDOMAIN), tcp), cacheable=True)
    return Forward(q)


def _response(q: dns.message.Message, rcode: dns.rcode.Rcode = dns.rcode.NOERROR) -> dns.message.Message:
    r = dns.message.make_response(q, our_payload=OUR_PAYLOAD)
    r.flags |= dns.flags.AA | dns.flags.RA
    r.set_rcode(rcode)
    return r


def _rotated(items: Sequence[object], turn: int) -> list[str]:
    if not items:
        return []
    k = turn % len(items)
    return [str(i) for i in (*items[k:], *items[:k])]


def _addresses(q: dns.message.Message, found: Answer, turn: int) -> dns.message.Message:
    r = _response(q)
    qrr = q.question[0]
    wanted = {
        dns.rdatatype.A: (("A", found.v4),),
        dns.rdatatype.AAAA: (("AAAA", found.v6),),
        dns.rdatatype.ANY: (("A", found.v4), ("AAAA", found.v6)),
    }.get(qrr.rdtype, ())
    for rtype, addrs in wanted:
        texts = _rotated(addrs, turn)
        if texts:
            r.answer.append(dns.rrset.from_text_list(qrr.name, TTL, "IN", rtype, texts))
    return r


def _reverse(
    q: dns.message.Message, table: Table, network: str, subnets: Sequence[Subnet], qname: str
) -> dns.message.Message | None:
    """PTR for a sandbox's address; NXDOMAIN inside the network's subnets; None: not ours."""
    target = table.reverse(network, qname)
    if target is not None:
        r = _response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, TTL, "IN", "PTR", target))
        return r
    try:
        ip = ipaddress.ip_address(dns.reversename.to_address(q.question[0].name))
    except (dns.exception.DNSException, ValueError):
        return None  # a partial reverse name (a zone cut): not one address, let upstream answer
    if any(ip in net for net in subnets):
        return _response(q, dns.rcode.NXDOMAIN)
    return None


def _finish(q: dns.message.Message, r: dns.message.Message, tcp: bool) -> bytes:
    """Wire form within the client's limit: over UDP, a reply that does not fit is truncated.
    dnspython shuffles an RRset's records by default; ours go out in the order built (the
    round-robin turn decides it), so rotation is what clients see, not chance."""
    if tcp:
        return r.to_wire(max_size=65535, want_shuffle=False)
    limit = max(UDP_PLAIN_SIZE, q.payload) if q.edns >= 0 else UDP_PLAIN_SIZE
    try:
        return r.to_wire(max_size=limit, want_shuffle=False)
    except dns.exception.TooBig:
        r.answer = []
        r.flags |= dns.flags.TC
        return r.to_wire(max_size=limit, want_shuffle=False)


def servfail(query: dns.message.Message) -> bytes:
    """SERVFAIL for a forwarded query whose upstreams did not answer in time."""
    r = dns.message.make_response(query, our_payload=OUR_PAYLOAD)
    r.flags |= dns.flags.RA
    r.set_rcode(dns.rcode.SERVFAIL)
    return r.to_wire()
