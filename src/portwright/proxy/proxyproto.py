"""PROXY protocol version 2 headers: what the proxy prepends toward a backend.

A userland proxy replaces the client's address with its own (moby #15086). The PROXY protocol v2
binary header carries the real client and the address it dialled to a backend that asks for it
(nginx ``proxy_protocol``, HAProxy ``accept-proxy``). This module is pure: it encodes headers and
decodes them (the decoder serves tests and backends written in Python).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
VERSION_CMD_PROXY = 0x21  # version 2, command PROXY
VERSION_CMD_LOCAL = 0x20  # version 2, command LOCAL (health checks; no addresses)
_FAM = {(4, "tcp"): 0x11, (4, "udp"): 0x12, (6, "tcp"): 0x21, (6, "udp"): 0x22}
_FAM_BACK = {v: k for k, v in _FAM.items()}
HEADER_FIXED = 16  # signature (12) + ver_cmd + fam + length (2)

Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A decoded header. ``src`` is the real client; ``dst`` the address it connected to."""

    proto: str  # "tcp" | "udp" | "unspec" (LOCAL command)
    src: tuple[Addr, int] | None
    dst: tuple[Addr, int] | None
    length: int  # bytes the header occupied on the wire


def _unmap(ip: Addr) -> Addr:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def encode(proto: str, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """A PROXY v2 header for one connection (TCP) or datagram (UDP).

    ``src``/``dst`` are (address, port) as the socket API returns them. IPv4-mapped IPv6
    addresses are written as IPv4. When the families of the two ends differ (an IPv6 client
    reaching an IPv4-only host address cannot happen, but a mapped one can), both are widened to
    IPv6 so that the header stays well formed.
    """
    s_ip = _unmap(ipaddress.ip_address(src[0].split("%", 1)[0]))
    d_ip = _unmap(ipaddress.ip_address(dst[0].split("%", 1)[0]))
    if s_ip.version != d_ip.version:
        s_ip = s_ip if s_ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{s_ip}")
        d_ip = d_ip if d_ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{d_ip}")
    try:
        fam = _FAM[(s_ip.version, proto)]
    except KeyError:
        raise ValueError(f"PROXY v2 has no encoding for protocol {proto!r}; use tcp or udp") from None
    for port in (src[1], dst[1]):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0-65535")
    body = s_ip.packed + d_ip.packed + struct.pack("!HH", src[1], dst[1])
    return SIGNATURE + struct.pack("!BBH", VERSION_CMD_PROXY, fam, len(body)) + body


def encode_local() -> bytes:
    """A LOCAL header: the connection is the proxy's own (a health check), no addresses."""
    return SIGNATURE + struct.pack("!BBH", VERSION_CMD_LOCAL, 0x00, 0)


def decode(data: bytes) -> ProxyHeader:
    """Parse a header at the start of ``data``; raises ValueError when it is not one (or partial)."""
    if len(data) < HEADER_FIXED:
        raise ValueError(f"PROXY v2 header needs {HEADER_FIXED} bytes, got {len(data)}")
    if data[:12] != SIGNATURE:
        raise ValueError("data does not start with the PROXY v2 signature")
    ver_cmd, fam, length = struct.unpack("!BBH", data[12:16])
    if ver_cmd >> 4 != 2:
        raise ValueError(f"PROXY header version {ver_cmd >> 4} is not 2")
    total = HEADER_FIXED + length
    if len(data) < total:
        raise ValueError(f"PROXY v2 header announces {length} address bytes, only {len(data) - 16} present")
    if ver_cmd & 0x0F == 0:
        return ProxyHeader("unspec", None, None, total)
    if ver_cmd & 0x0F != 1:
        raise ValueError(f"PROXY v2 command {ver_cmd & 0x0F} is neither LOCAL nor PROXY")
    if fam not in _FAM_BACK:
        raise ValueError(f"PROXY v2 address family/protocol byte 0x{fam:02x} is not TCP/UDP over IPv4/IPv6")
    version, proto = _FAM_BACK[fam]
    alen = 4 if version == 4 else 16
    if length < 2 * alen + 4:
        raise ValueError(f"PROXY v2 length {length} is too short for its address family")
    body = data[16:total]
    src_ip = ipaddress.ip_address(body[:alen])
    dst_ip = ipaddress.ip_address(body[alen : 2 * alen])
    sport, dport = struct.unpack("!HH", body[2 * alen : 2 * alen + 4])
    return ProxyHeader(proto, (src_ip, sport), (dst_ip, dport), total)
