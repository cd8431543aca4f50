"""Unpublishing N ports costs one nft transaction and no table read, whatever N (issue 11).

A 10,000-port table is about a second of ``nft -j list`` and JSON per read, and teardown used to
read it to find the owner's elements. A publisher that still holds its host bindings knows its
keys: ``Firewall.unpublish(owner, known=...)`` deletes them in one transaction, and reads the table
only when that fails (an element already gone). Counted through the fake backend's ``calls``.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
from contextlib import ExitStack

import pytest
from nftdata import m, web_firewall

from portwright.firewall import rules
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend
from portwright.model import Mapping
from portwright.publish.nat import NatPublisher
from portwright.publish.registry import PublishContext
from portwright.spec import SandboxSpec

OWNER, OTHER = "pw:0123456789ab", "pw:bbbbbbbbbbbb"


def _ports(n: int, base: int = 20000) -> list[Mapping]:
    return [
        m("tcp", host, base + i, cont, 30000 + i)
        for i in range(n)
        for host, cont in (("0.0.0.0", "198.18.5.2"), ("::", "2001:2:5::2"))
    ]


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def fw(fake: FakeBackend) -> Firewall:
    f = web_firewall(fake)
    f.publish(OTHER, [m("tcp", "0.0.0.0", 9999, "198.18.5.9", 80)], flush_udp=False)
    return f


def _owners(fw: Firewall) -> dict[str | None, int]:
    out: dict[str | None, int] = {}
    for p in fw.published():
        out[p.owner] = out.get(p.owner, 0) + 1
    return out


@pytest.mark.parametrize("n", [1, 100, 10_000])
def test_known_mappings_go_in_one_transaction_with_no_read(fw: Firewall, fake: FakeBackend, n: int) -> None:
    maps = _ports(n)
    fw.publish(OWNER, maps, flush_udp=False)
    assert _owners(fw)[rules.owner_tag(OWNER)] == 2 * n
    fake.calls.clear()
    committed = len(fake.transactions)
    fw.unpublish(OWNER, known=maps)
    assert fake.calls == ["lock", "apply", "unlock"]
    assert len(fake.transactions) == committed + 1
    assert len(fake.transactions[-1]) <= len(rules.PUB_MAPS)  # one delete per map, not per port
    assert _owners(fw) == {rules.owner_tag(OTHER): 1}  # the other owner's element stays


def test_a_missing_element_falls_back_to_the_tagged_read(fw: Firewall, fake: FakeBackend) -> None:
    maps = _ports(50)
    fw.publish(OWNER, maps, flush_udp=False)
    fake.apply(rules.delete_elements_commands(maps[10:11]))  # someone deleted one element
    fake.calls.clear()
    rejected = len(fake.rejected)
    fw.unpublish(OWNER, known=maps)
    assert len(fake.rejected) == rejected + 1  # the by-key delete changed nothing...
    assert "read" in fake.calls  # ...and the table was read to find what is left
    assert _owners(fw) == {rules.owner_tag(OTHER): 1}
    fake.calls.clear()
    fw.unpublish(OWNER, known=maps)  # again: idempotent
    assert _owners(fw) == {rules.owner_tag(OTHER): 1}


def _nat_publisher(fw: Firewall, n: int, stack: ExitStack) -> NatPublisher:
    """A NatPublisher that published ``n`` dual-stack ports whose [::]:P reservations it holds."""
    pub = NatPublisher(PublishContext(SandboxSpec(cmd=("true",)), OWNER, fw))
    stack.callback(pub.unpublish)
    bound: list[tuple[Mapping, socket.socket | None]] = []
    for i in range(n):
        s = stack.enter_context(socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        port = s.getsockname()[1]
        v4 = Mapping(
            "tcp", ipaddress.IPv4Address("0.0.0.0"), port, ipaddress.IPv4Address("198.18.5.2"), 80 + i
        )
        v6 = Mapping("tcp", ipaddress.IPv6Address("::"), port, ipaddress.IPv6Address("2001:2:5::2"), 80 + i)
        bound += [(v4, None), (v6, s)]  # one [::]:P reservation holds both families
    pub.publish(bound)
    return pub


def test_the_nat_publisher_tears_down_without_reading_the_table(fw: Firewall, fake: FakeBackend) -> None:
    with ExitStack() as stack:
        pub = _nat_publisher(fw, 20, stack)
        assert _owners(fw)[rules.owner_tag(OWNER)] == 40
        fake.calls.clear()
        assert pub.unpublish() == []
        assert "read" not in fake.calls and fake.calls.count("apply") == 1
        assert _owners(fw) == {rules.owner_tag(OTHER): 1}


def test_randomized_unpublish_never_touches_another_owner() -> None:
    """Seeded: owners publish random ports, elements vanish at random (a reload, a hand-deleted
    element), owners leave in random order by key; what stays is exactly the others' elements."""
    seed = int(os.environ.get("PW_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (PW_SEED={seed} repeats it)")
    rng = random.Random(seed)
    for _ in range(30):
        fake = FakeBackend()
        fw = web_firewall(fake)
        ports = rng.sample(range(1024, 65536), 40)
        owners = {f"pw:{i:012x}": _ports(0) for i in range(4)}
        for i, owner in enumerate(owners):
            mine = ports[i * 10 : (i + 1) * 10]
            owners[owner] = [
                m(proto, host, p, cont, 80) for p in mine for proto in ("tcp", "udp")
                for host, cont in (("0.0.0.0", f"198.18.5.{i + 2}"), ("::", f"2001:2:5::{i + 2}"))
            ]  # fmt: skip
            fw.publish(owner, owners[owner], flush_udp=False)
        for maps in owners.values():  # some elements are gone before teardown
            gone = [x for x in maps if rng.random() < 0.1]
            if gone:
                fake.apply(rules.delete_elements_commands(gone))
        order = list(owners)
        rng.shuffle(order)
        for owner in order:
            left = {o: n for o, n in _owners(fw).items() if o != rules.owner_tag(owner)}
            fw.unpublish(owner, known=owners[owner])  # all it published, some gone
            assert _owners(fw) == left, f"seed {seed}"
        assert fw.published() == []
