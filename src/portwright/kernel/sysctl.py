"""The sysctls portwright sets, each named with the reason it is needed."""

from __future__ import annotations

import os

from ..errors import KernelError

# Routing between the bridges and the host's other interfaces (egress, and DNAT from outside).
IP_FORWARD = "net/ipv4/ip_forward"
IP6_FORWARD = "net/ipv6/conf/all/forwarding"
# Lets a DNAT of 127.0.0.1:P leave through the bridge: without it the kernel drops packets with
# a loopback source or destination on a non-loopback interface as martians (Docker sets it too).
ROUTE_LOCALNET = "net/ipv4/conf/{dev}/route_localnet"
# Inside a sandbox: let the kernel bind to a not-yet-assigned address, never needed by us; and
# keep unprivileged ports low as in Docker (a sandboxed server may bind 80 without CAP_NET_BIND).
UNPRIV_PORT_START = "net/ipv4/ip_unprivileged_port_start"
# Inside a sandbox: ICMP datagram sockets ("ping sockets") for every group, so ping works without
# CAP_NET_RAW (Docker sets the same range in its containers). Per network namespace.
PING_GROUP_RANGE = "net/ipv4/ping_group_range"
PING_GROUP_ALL = "0 2147483647"


def read(key: str) -> str | None:
    try:
        with open(f"/proc/sys/{key}") as f:
            return f.read().strip()
    except OSError:
        return None


def write(key: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)
    except OSError as e:
        raise KernelError(f"sysctl {key.replace('/', '.')}={value}", e.strerror or str(e), e.errno) from None


def ensure(key: str, value: str) -> None:
    if read(key) != value:
        write(key, value)


def ipv6_enabled() -> bool:
    return os.path.exists("/proc/net/if_inet6") and read("net/ipv6/conf/all/disable_ipv6") == "0"


def local_port_range() -> tuple[int, int]:
    text = read("net/ipv4/ip_local_port_range") or "32768 60999"
    lo, hi = text.split()
    return int(lo), int(hi)


def reserved_ports() -> set[int]:
    text = read("net/ipv4/ip_local_reserved_ports") or ""
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out
