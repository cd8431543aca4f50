"""Unit tests of portwright.owners: every kind of owner tag, made and read back (pure, no root)."""

from __future__ import annotations

import hashlib
import random
import string

import pytest

from portwright import owners as o
from portwright.errors import BadInput


def test_sandbox_owner() -> None:
    assert o.sandbox_owner("0123456789ab") == "pw:0123456789ab"
    assert o.parse_owner("pw:0123456789ab") == o.Owner("sandbox", "pw:0123456789ab", "0123456789ab")


@pytest.mark.parametrize(
    "tag,kind,name",
    [
        ("pw:abc", "sandbox", "abc"),
        ("cni:abc:eth0:pwnet", "cni", "abc:eth0:pwnet"),
        ("cni:nocolon", "cni", "nocolon"),
        ("pw-net:web", "network", "web"),
        ("pw-base: replies", "base", "replies"),
        ("h:" + "0" * 64, "hashed", "0" * 64),
        ("sandbox:abc", "other", "sandbox:abc"),
        ("", "other", ""),
    ],
)
def test_parse_owner_tells_kinds_apart(tag: str, kind: str, name: str) -> None:
    got = o.parse_owner(tag)
    assert (got.kind, got.name, got.tag) == (kind, name, tag)
    assert got.is_owner == (kind not in ("network", "base"))


def test_parse_owner_reads_cni_fields() -> None:
    got = o.parse_owner(o.cni_owner("f" * 64, "eth0", "pwnet"))
    assert got.cni == o.CniOwner("f" * 64, "eth0", "pwnet")
    assert o.parse_owner("cni:a::net").cni is None and o.parse_owner("pw:abc").cni is None


def test_nft_comment_fits_and_refuses_reserved_prefixes() -> None:
    cni = o.cni_owner("f" * 64, "eth0", "pwnet")
    assert o.nft_comment(cni) == cni
    long_owner = "cni:" + "a" * 64 + ":" + "x" * 80
    tag = o.nft_comment(long_owner)
    assert tag.startswith(o.HASHED_PREFIX) and len(tag.encode()) <= o.MAX_COMMENT
    assert o.parse_owner(tag).kind == "hashed" and tag == o.nft_comment(long_owner)
    for bad in ("", "pw-net:web", "pw-base", "h:abc", "pw:\n"):
        with pytest.raises(BadInput, match="owner tag"):
            o.nft_comment(bad)


def test_network_tag() -> None:
    assert o.network_tag("web") == "pw-net:web"
    assert o.parse_owner(o.network_tag("web")) == o.Owner("network", "pw-net:web", "web")
    with pytest.raises(BadInput, match="network name"):
        o.network_tag("n" * 200)


def test_cni_owner_round_trip() -> None:
    cid = "f" * 64
    tag = o.cni_owner(cid, "eth0", "pwnet")
    assert tag == f"cni:{cid}:eth0:pwnet"
    assert o.parse_cni_owner(tag) == o.CniOwner(cid, "eth0", "pwnet")
    assert o.parse_cni_owner("sandbox:abc") is None
    assert o.parse_cni_owner("cni:nocolon") is None
    assert o.parse_cni_owner("cni:a::net") is None
    assert o.parse_cni_owner("cni:a:b:c:d") is None


def test_legacy_cni_owner_parses_without_network() -> None:
    assert o.cni_legacy_owner("abc", "eth0") == "cni:abc:eth0"
    assert o.parse_cni_owner("cni:abc:eth0") == o.CniOwner("abc", "eth0", None)


@pytest.mark.parametrize("name", ["n" * 41, "net:work", "net work", "-net", "réseau", "x\n"])
def test_network_field_digest(name: str) -> None:
    field = o.network_field(name)
    assert field.startswith("#") and len(field) == 1 + o.NET_DIGEST_HEX
    assert field == o.network_field(name) and field != o.network_field(name + "2")
    tag = o.cni_owner("abc", "eth0", name)
    assert o.parse_cni_owner(tag) == o.CniOwner("abc", "eth0", field)


def test_long_container_id_keeps_a_prefix_and_a_digest() -> None:
    cid = "a" * 200
    tag = o.cni_owner(cid, "eth0", "pwnet")
    t = o.parse_cni_owner(tag)
    assert t is not None and t.network == "pwnet" and t.ifname == "eth0" and t.shown_id == "a" * 12
    assert t.container == "a" * 12 + "#" + hashlib.sha256(cid.encode()).hexdigest()[:32]
    assert tag != o.cni_owner("a" * 199, "eth0", "pwnet") != o.cni_owner(cid, "eth1", "pwnet")


def test_cni_tags_fit_nft_and_round_trip_random() -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    id_chars = string.ascii_letters + string.digits + "_.-"
    seen: dict[str, tuple[str, str, str]] = {}
    for _ in range(3000):
        n = rng.choice([1, 12, 13, 63, 64, 65, 90, 110, 120, 200, 1000, rng.randrange(1, 300)])
        cid = rng.choice(string.ascii_letters + string.digits) + "".join(rng.choices(id_chars, k=n - 1))
        ifname = rng.choice(["eth0", "net1", "e" * 15, rng.choice("abc") * rng.randrange(1, 16)])
        network = rng.choice(
            [
                "pwnet",
                "podman",
                "n" * 40,
                "n" * 41,
                "a b",
                "net:x",
                "é" * 30,
                "".join(rng.choices(id_chars, k=rng.randrange(1, 60))).lstrip("_.-") or "n",
            ]
        )
        tag = o.cni_owner(cid, ifname, network)
        assert len(tag.encode()) <= o.MAX_COMMENT and tag.isprintable(), (seed, tag)
        assert o.nft_comment(tag) == tag  # never hashed by the firewall: the kernel holds it whole
        t = o.parse_cni_owner(tag)
        assert t is not None and t.ifname == ifname and t.network == o.network_field(network), (seed, tag)
        assert t.shown_id == cid[:12]
        assert t.container == cid or t.container.startswith(cid[:12] + "#"), (seed, tag)
        assert o.cni_owner(cid, ifname, network) == tag  # GC recomputes it from the valid list
        key = (cid, ifname, network)
        assert seen.setdefault(tag, key) == key, (seed, tag)  # distinct attachments, distinct tags
