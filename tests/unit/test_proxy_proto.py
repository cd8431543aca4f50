"""PROXY protocol v2 encoder/decoder: byte-exact headers and clear errors."""

from __future__ import annotations

import ipaddress

import pytest

from portwright.proxy import proxyproto


def test_tcp4_header_bytes() -> None:
    h = proxyproto.encode("tcp", ("198.18.0.10", 40000), ("198.18.0.1", 8080))
    assert h[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    assert h[12] == 0x21 and h[13] == 0x11
    assert int.from_bytes(h[14:16], "big") == 12 and len(h) == 28
    assert h[16:20] == bytes([198, 18, 0, 10]) and h[20:24] == bytes([198, 18, 0, 1])
    assert h[24:26] == (40000).to_bytes(2, "big") and h[26:28] == (8080).to_bytes(2, "big")


def test_udp6_roundtrip() -> None:
    h = proxyproto.encode("udp", ("2001:2::5", 5353), ("2001:2::1", 53))
    assert h[13] == 0x22 and len(h) == 16 + 36
    d = proxyproto.decode(h + b"payload")
    assert d.proto == "udp" and d.length == 52
    assert d.src == (ipaddress.ip_address("2001:2::5"), 5353)
    assert d.dst == (ipaddress.ip_address("2001:2::1"), 53)


def test_mapped_v4_is_written_as_v4() -> None:
    d = proxyproto.decode(proxyproto.encode("tcp", ("::ffff:198.18.0.9", 1), ("::ffff:198.18.0.1", 2)))
    assert d.src == (ipaddress.ip_address("198.18.0.9"), 1)


def test_mixed_families_widen_to_v6() -> None:
    d = proxyproto.decode(proxyproto.encode("tcp", ("198.18.0.9", 1), ("2001:2::1", 2)))
    assert d.src is not None and d.src[0].version == 6
    assert d.src[0] == ipaddress.ip_address("::ffff:198.18.0.9")


def test_local_header() -> None:
    d = proxyproto.decode(proxyproto.encode_local())
    assert d.proto == "unspec" and d.src is None and d.length == 16


@pytest.mark.parametrize(
    "bad, msg",
    [
        (b"GET / HTTP/1.1\r\n\r\n", "signature"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21", "needs 16 bytes"),
        (proxyproto.SIGNATURE + b"\x21\x11\x00\x0c" + b"\x00" * 4, "announces 12"),
        (proxyproto.SIGNATURE + b"\x11\x11\x00\x00", "version 1"),
        (proxyproto.SIGNATURE + b"\x21\x31\x00\x0c" + b"\x00" * 12, "0x31"),
    ],
)
def test_decode_rejects(bad: bytes, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        proxyproto.decode(bad)


def test_encode_rejects_sctp_and_bad_port() -> None:
    with pytest.raises(ValueError, match="sctp"):
        proxyproto.encode("sctp", ("198.18.0.1", 1), ("198.18.0.2", 2))
    with pytest.raises(ValueError, match="70000"):
        proxyproto.encode("tcp", ("198.18.0.1", 70000), ("198.18.0.2", 2))
