"""The connect-time rewrite programs, run in the test interpreter (bpfvm) over fake maps: which
dialled addresses are rewritten and which are left alone, and that the reverse programs show the
dialled address again. Also the map encodings. Pure: no root."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from bpfvm import FakeMap, Vm

from portwright.kernel.bpf import consts as c
from portwright.publish import ebpf_progs as ep

HOST_NS = 0x1234_5678_9ABC
SVC_FD, REV_FD, LOCAL_FD = 11, 12, 13
SANDBOX4 = ipaddress.ip_address("198.18.0.2")
SANDBOX6 = ipaddress.ip_address("2001:2::2")
HOST_ADDR4 = ipaddress.ip_address("192.0.2.10")  # an address of "this host" (the local map)


def ip(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(s)


@pytest.fixture
def vm() -> Vm:
    v = Vm(
        {
            SVC_FD: FakeMap(ep.SVC_KEY, ep.SVC_VALUE),
            REV_FD: FakeMap(ep.REV_KEY, ep.REV_VALUE),
            LOCAL_FD: FakeMap(ep.LOCAL_KEY, ep.LOCAL_VALUE),
        },
        netns_cookie=HOST_NS,
    )
    svc = v.maps[SVC_FD].data
    # 0.0.0.0:8080 and [::]:8080 (tcp) -> the sandbox; 127.0.0.1:9090 only; [::]:5353/udp -> v4 backend
    svc[ep.svc_key("tcp", ip("0.0.0.0"), 8080)] = bytearray(ep.svc_value(SANDBOX4, 80, 1))
    svc[ep.svc_key("tcp", ip("::"), 8080)] = bytearray(ep.svc_value(SANDBOX6, 80, 1))
    svc[ep.svc_key("tcp", ip("127.0.0.1"), 9090)] = bytearray(ep.svc_value(SANDBOX4, 90, 1))
    svc[ep.svc_key("udp", ip("0.0.0.0"), 5353)] = bytearray(ep.svc_value(SANDBOX4, 53, 2))
    svc[ep.svc_key("udp", ip("::"), 5353)] = bytearray(ep.svc_value(SANDBOX4, 53, 2))
    svc[ep.svc_key("tcp", ip("::1"), 7070)] = bytearray(ep.svc_value(SANDBOX4, 70, 3))
    v.maps[LOCAL_FD].data[ep.ip16(HOST_ADDR4)] = bytearray(struct.pack("<I", 1))
    return v


FDS = ep.MapFds(SVC_FD, REV_FD, LOCAL_FD)


def ctx_for(dst: str, port: int, proto: int = socket.IPPROTO_TCP) -> bytearray:
    a = ip(dst)
    ctx = bytearray(72)
    if a.version == 4:
        struct.pack_into("<I", ctx, c.SA_USER_FAMILY, socket.AF_INET)
        ctx[c.SA_USER_IP4 : c.SA_USER_IP4 + 4] = a.packed
    else:
        struct.pack_into("<I", ctx, c.SA_USER_FAMILY, socket.AF_INET6)
        ctx[c.SA_USER_IP6 : c.SA_USER_IP6 + 16] = a.packed
    struct.pack_into("<I", ctx, c.SA_USER_PORT, socket.htons(port))
    struct.pack_into("<I", ctx, c.SA_PROTOCOL, proto)
    return ctx


def sk_bound(src: str | None = None) -> bytearray:
    sk = bytearray(80)
    if src is not None:
        a = ip(src)
        if a.version == 4:
            sk[c.SK_SRC_IP4 : c.SK_SRC_IP4 + 4] = a.packed
        else:
            sk[c.SK_SRC_IP6 : c.SK_SRC_IP6 + 16] = a.packed
    return sk


def dest(ctx: bytearray, family: int) -> tuple[str, int]:
    port = socket.ntohs(struct.unpack_from("<I", ctx, c.SA_USER_PORT)[0] & 0xFFFF)
    if family == 4:
        return str(ipaddress.IPv4Address(bytes(ctx[4:8]))), port
    a = ipaddress.IPv6Address(bytes(ctx[8:24]))
    return (f"::ffff:{a.ipv4_mapped}" if a.ipv4_mapped else str(a)), port


def connect(
    vm: Vm, dst: str, port: int, proto: int = socket.IPPROTO_TCP, src: str | None = None
) -> tuple[str, int]:
    family = 4 if ip(dst).version == 4 else 6
    hook = "connect"
    ctx = ctx_for(dst, port, proto)
    assert vm.run(ep.forward(family, hook, FDS, HOST_NS), ctx, sk_bound(src)) == 1
    return dest(ctx, family)


@pytest.mark.parametrize(
    "dst,port,want",
    [
        ("127.0.0.1", 8080, ("198.18.0.2", 80)),
        ("127.0.0.53", 8080, ("198.18.0.2", 80)),  # all of 127/8 is the host
        (str(HOST_ADDR4), 8080, ("198.18.0.2", 80)),  # a host address, through the local map
        ("198.51.100.7", 8080, ("198.51.100.7", 8080)),  # not the host: never rewritten
        ("127.0.0.1", 8081, ("127.0.0.1", 8081)),  # not published
        ("127.0.0.1", 9090, ("198.18.0.2", 90)),  # the 127.0.0.1-only binding
        ("127.0.0.2", 9090, ("127.0.0.2", 9090)),  # ... rewritten only for 127.0.0.1
        (str(HOST_ADDR4), 9090, (str(HOST_ADDR4), 9090)),
        ("::1", 8080, ("2001:2::2", 80)),
        ("::1", 7070, ("::ffff:198.18.0.2", 70)),  # [::1] -> an IPv4-only backend: v4-mapped
        ("::ffff:127.0.0.1", 8080, ("::ffff:198.18.0.2", 80)),  # dual-stack socket, v4 binding
        ("::ffff:127.0.0.1", 9090, ("::ffff:198.18.0.2", 90)),
        ("::2", 8080, ("::2", 8080)),
        ("2001:db8::1", 8080, ("2001:db8::1", 8080)),
    ],
)
def test_connect_rewrites_only_published_local_bindings(
    vm: Vm, dst: str, port: int, want: tuple[str, int]
) -> None:
    assert connect(vm, dst, port) == want


def test_other_namespaces_are_never_rewritten(vm: Vm) -> None:
    vm.netns_cookie = HOST_NS + 1  # a sandbox's own loopback, or any other namespace
    assert connect(vm, "127.0.0.1", 8080) == ("127.0.0.1", 8080)
    assert connect(vm, "::1", 8080) == ("::1", 8080)
    assert vm.maps[REV_FD].data == {}


@pytest.mark.parametrize("src", ["127.0.0.1", "127.1.2.3"])
def test_a_loopback_bound_v4_client_keeps_the_nat_path(vm: Vm, src: str) -> None:
    assert connect(vm, "127.0.0.1", 8080, src=src) == ("127.0.0.1", 8080)


@pytest.mark.parametrize("src", ["::1", "::ffff:127.0.0.1"])
def test_a_loopback_bound_v6_client_keeps_the_nat_path(vm: Vm, src: str) -> None:
    assert connect(vm, "::1", 8080, src=src) == ("::1", 8080)


def test_a_client_bound_elsewhere_is_rewritten(vm: Vm) -> None:
    assert connect(vm, "127.0.0.1", 8080, src=str(HOST_ADDR4)) == ("198.18.0.2", 80)
    assert connect(vm, "::1", 8080, src="2001:db8::5") == ("2001:2::2", 80)


def test_protocols_are_separate_and_others_untouched(vm: Vm) -> None:
    assert connect(vm, "127.0.0.1", 5353, socket.IPPROTO_UDP) == ("198.18.0.2", 53)
    assert connect(vm, "127.0.0.1", 5353, socket.IPPROTO_TCP) == ("127.0.0.1", 5353)
    assert connect(vm, "127.0.0.1", 8080, socket.IPPROTO_ICMP) == ("127.0.0.1", 8080)


def test_sendmsg6_leaves_a_v4_backend_to_the_relay(vm: Vm) -> None:
    ctx = ctx_for("::1", 5353, socket.IPPROTO_UDP)
    assert vm.run(ep.forward(6, "sendmsg", FDS, HOST_NS), ctx, sk_bound()) == 1
    assert dest(ctx, 6) == ("::1", 5353)  # the kernel refuses a v4-mapped rewrite here (ENOTSUPP)
    ctx = ctx_for("127.0.0.1", 5353, socket.IPPROTO_UDP)
    assert vm.run(ep.forward(4, "sendmsg", FDS, HOST_NS), ctx, sk_bound()) == 1
    assert dest(ctx, 4) == ("198.18.0.2", 53)


def test_reverse_shows_the_dialled_address_to_that_socket_only(vm: Vm) -> None:
    vm.socket_cookie = 501
    assert connect(vm, "127.0.0.1", 8080) == ("198.18.0.2", 80)
    peer = ctx_for("198.18.0.2", 80)
    assert vm.run(ep.reverse(4, FDS), peer, sk_bound()) == 1
    assert dest(peer, 4) == ("127.0.0.1", 8080)
    vm.socket_cookie = 502  # another socket talking to the sandbox directly sees the truth
    peer = ctx_for("198.18.0.2", 80)
    vm.run(ep.reverse(4, FDS), peer, sk_bound())
    assert dest(peer, 4) == ("198.18.0.2", 80)


def test_reverse_v6_for_v4_mapped_peer(vm: Vm) -> None:
    vm.socket_cookie = 9
    assert connect(vm, "::1", 7070) == ("::ffff:198.18.0.2", 70)
    peer = ctx_for("::ffff:198.18.0.2", 70)
    vm.run(ep.reverse(6, FDS), peer, sk_bound())
    assert dest(peer, 6) == ("::1", 7070)


def test_map_encodings_roundtrip() -> None:
    k = ep.svc_key("udp", ip("127.0.0.1"), 8080)
    assert len(k) == ep.SVC_KEY and k[:12] == ep.MAPPED_PREFIX and k[16:18] == b"\x1f\x90" and k[18] == 17
    v = ep.svc_value(ip("2001:2::2"), 80, 0xABCDEF)
    assert len(v) == ep.SVC_VALUE
    e = ep.decode_svc(k, v)
    assert (e.proto, str(e.host_ip), e.host_port, str(e.ip), e.port, e.owner) == (
        "udp",
        "127.0.0.1",
        8080,
        "2001:2::2",
        80,
        0xABCDEF,
    )
    assert str(ep.decode_svc(ep.svc_key("tcp", ip("0.0.0.0"), 1), v).host_ip) == "0.0.0.0"


def test_cookie_is_baked_into_forward_programs_only() -> None:
    lo = (HOST_NS & 0xFFFFFFFF).to_bytes(4, "little")
    assert lo in ep.forward(4, "connect", FDS, HOST_NS)
    assert lo not in ep.reverse(4, FDS)
