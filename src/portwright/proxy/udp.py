"""The UDP relay: one listening socket per mapping and a flow table keyed by client and local address.

UDP has no connection, so a proxy must invent one. Each client address gets its own connected
socket toward the backend (a "flow"); the backend's replies arriving on it go back to that
client. Flows that stay silent longer than the idle timeout (90 s by default, as conntrack's
"assured" UDP timeout) are dropped. Datagrams up to 65,507 bytes pass whole.

On a wildcard listener the reply must leave from the address the client sent to, or a
multi-homed host answers from the wrong source and the client drops it; the destination is read
with IP_PKTINFO / IPV6_PKTINFO and set again on the reply. A flow is therefore keyed by (client
address, local address the datagram arrived on): one client socket talking to 127.0.0.2 and to
127.0.0.3 is two flows, each answering from its own address. A backend that is not up yet
answers with ICMP port unreachable, which shows up as ECONNREFUSED on the flow socket: it is
counted and ignored, so the flow works as soon as the backend starts.

Each flow holds a descriptor, so the table is capped per mapping (``MAX_FLOWS``, the listener's
``max_flows``). At the cap, datagrams that would start a new flow are dropped and counted
(``udp_dropped``); existing flows are never evicted for newcomers. Evicting the least recently
used flow would let one client spraying source ports push every other client out of the table
(the sprayer is always the most recent sender), silently breaking conversations whose replies
are still on their way. Dropping keeps those working, and new clients get in as soon as idle
flows expire.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import TYPE_CHECKING

from . import proxyproto
from .counters import BYTES_IN, BYTES_OUT, ERRORS, TOTAL, UDP_DROPPED, UDP_FLOWS

if TYPE_CHECKING:
    from ..model import Mapping
    from .loop import EventLoop

MAX_DATAGRAM = 65535  # receive buffer: the largest UDP payload over IPv4 is 65,507, IPv6 65,527
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python 3.11 lacks the constant
_CMSG_SPACE = socket.CMSG_SPACE(20)  # room for in6_pktinfo (20 bytes) or in_pktinfo (12)
_BATCH = 64  # datagrams handled per wake-up before giving other sockets a turn
#: Flow sockets get a receive buffer that holds several maximum-size datagrams.
FLOW_RCVBUF = 1 << 20
#: Flows (one socket each) per mapping before new clients' datagrams are dropped. Far below the
#: descriptor limit (a hard 20,000 here, see DESIGN.md) while leaving room for TCP relays.
MAX_FLOWS = 4096
# Where the datagram's destination address sits in the PKTINFO payload: in_pktinfo is
# (ifindex, spec_dst, addr) and ipi_addr is the header's destination; in6_pktinfo starts with it.
_DST4 = slice(8, 12)
_DST6 = slice(0, 16)


#: Listener receive buffer: room for bursts (SO_RCVBUFFORCE as root, else capped by rmem_max).
LISTENER_RCVBUF = 4 << 20


def tune_listener(sock: socket.socket, wildcard: bool) -> None:
    """Big receive buffer, and the destination address of each datagram on wildcard sockets."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, LISTENER_RCVBUF)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LISTENER_RCVBUF)
    if wildcard:
        enable_pktinfo(sock)


def enable_pktinfo(sock: socket.socket) -> None:
    """Ask the kernel to report each datagram's destination address (wildcard listeners)."""
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)


class UdpFlow:
    """One client's connected socket toward the backend."""

    __slots__ = ("listener", "client", "sock", "fd", "cmsg", "last", "hdr")

    def __init__(
        self,
        listener: UdpListener,
        client: tuple[object, ...],
        sock: socket.socket,
        cmsg: list[tuple[int, int, bytes]],
        hdr: bytes,
        now: float,
    ) -> None:
        self.listener = listener
        self.client = client
        self.sock = sock
        self.fd = sock.fileno()
        self.cmsg = cmsg  # ancillary data that makes replies leave from the right address
        self.last = now
        self.hdr = hdr  # PROXY v2 header prepended to each datagram, b"" when off

    def on_event(self, fd: int, ev: int) -> None:
        lst = self.listener
        ctr = lst.ctr
        out = lst.sock
        recv_into = self.sock.recv_into
        buf, view = lst.buf, lst.view
        for _ in range(_BATCH):
            try:
                n = recv_into(buf)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                ctr[ERRORS] += 1  # backend not (yet) listening: ICMP unreachable, keep the flow
                continue
            except OSError:
                ctr[ERRORS] += 1
                continue
            self.last = lst.loop.now
            try:
                if self.cmsg:
                    out.sendmsg([view[:n]], self.cmsg, 0, self.client)
                else:
                    out.sendto(view[:n], self.client)
                ctr[BYTES_OUT] += n
            except OSError:
                ctr[ERRORS] += 1

    def close(self) -> None:
        self.listener.loop.forget(self.fd)
        self.sock.close()


class UdpListener:
    """A bound UDP socket for one Mapping, with its flow table."""

    __slots__ = (
        "loop",
        "mapping",
        "sock",
        "fd",
        "ctr",
        "flows",
        "pktinfo",
        "dst",
        "backend",
        "bfamily",
        "backend4",
        "bfamily4",
        "proxy_protocol",
        "idle_timeout",
        "max_flows",
        "local",
        "buf",
        "view",
    )

    def __init__(
        self,
        loop: EventLoop,
        mapping: Mapping,
        sock: socket.socket,
        ctr: list[int],
        proxy_protocol: bool,
        idle_timeout: float,
        max_flows: int = MAX_FLOWS,
        twin: Mapping | None = None,
    ) -> None:
        self.loop = loop
        self.mapping = mapping
        self.sock = sock
        self.fd = sock.fileno()
        self.ctr = ctr
        # key: the client address, or (client address, local address bytes) on wildcard listeners
        self.flows: dict[object, UdpFlow] = {}
        self.pktinfo = mapping.wildcard
        self.dst = _DST4 if sock.family == socket.AF_INET else _DST6
        self.backend = (str(mapping.container_ip), mapping.container_port)
        self.bfamily = socket.AF_INET if mapping.container_ip.version == 4 else socket.AF_INET6
        four = twin or mapping  # a dual-stack socket's IPv4 clients go to its IPv4 twin's backend
        self.backend4 = (str(four.container_ip), four.container_port)
        self.bfamily4 = socket.AF_INET if four.container_ip.version == 4 else socket.AF_INET6
        self.proxy_protocol = proxy_protocol
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.local = sock.getsockname()
        # One receive buffer per listener, reused for every datagram both ways: no 64 KiB
        # allocation per datagram. (Only this loop's thread touches it.)
        self.buf = bytearray(MAX_DATAGRAM)
        self.view = memoryview(self.buf)

    def on_event(self, fd: int, ev: int) -> None:
        sock = self.sock
        ctr = self.ctr
        flows = self.flows
        buf, view = self.buf, self.view
        pktinfo, dst = self.pktinfo, self.dst
        anc: list[tuple[int, int, bytes]] = []
        key: object
        for _ in range(_BATCH):
            try:
                if pktinfo:
                    n, anc, _flags, client = sock.recvmsg_into([buf], _CMSG_SPACE)
                    # only PKTINFO is enabled, so it is the one control message
                    key = (client, anc[0][2][dst]) if anc else client
                else:
                    n, client = sock.recvfrom_into(buf)
                    key = client
            except BlockingIOError:
                return
            except OSError:
                ctr[ERRORS] += 1
                continue
            data: bytes | memoryview = view[:n]
            flow = flows.get(key)
            if flow is None:
                if len(flows) >= self.max_flows:
                    ctr[UDP_DROPPED] += 1
                    self.loop.flows_full(self)
                    continue
                try:
                    flow = self._new_flow(client, key, anc)
                except OSError:
                    ctr[ERRORS] += 1
                    continue
            flow.last = self.loop.now
            if flow.hdr:
                data = flow.hdr + data
            try:
                flow.sock.send(data)
                ctr[BYTES_IN] += n
            except ConnectionRefusedError:
                # The previous datagram drew an ICMP port unreachable; this one was not sent.
                # Retry once: the error was consumed, and the backend may be up by now.
                ctr[ERRORS] += 1
                try:
                    flow.sock.send(data)
                    ctr[BYTES_IN] += n
                except OSError:
                    pass
            except OSError:
                ctr[ERRORS] += 1  # EAGAIN (backend socket full) or EMSGSIZE: dropped, as UDP may

    def _new_flow(
        self, client: tuple[object, ...], key: object, anc: list[tuple[int, int, bytes]]
    ) -> UdpFlow:
        cmsg: list[tuple[int, int, bytes]] = []
        local: tuple[str, int] = (str(self.local[0]), int(self.local[1]))
        for level, kind, payload in anc:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(payload) >= 12:
                _ifindex, spec_dst, addr = struct.unpack("=i4s4s", payload[:12])
                # Reply from the address the client wrote to; let routing pick the interface.
                cmsg = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, addr, bytes(4)))]
                local = (socket.inet_ntop(socket.AF_INET, addr), local[1])
            elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(payload) >= 20:
                addr6, ifindex = struct.unpack("=16si", payload[:20])
                ip6 = ipaddress.IPv6Address(addr6)
                keep_if = ifindex if (ip6.is_link_local or ip6.is_loopback) else 0
                cmsg = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, struct.pack("=16si", addr6, keep_if))]
                local = (str(ip6), local[1])
        v4 = self.sock.family == socket.AF_INET or str(client[0]).startswith("::ffff:")
        bfam, backend = (self.bfamily4, self.backend4) if v4 else (self.bfamily, self.backend)
        s = socket.socket(bfam, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, FLOW_RCVBUF)
            s.connect(backend)
        except OSError:
            s.close()
            raise
        hdr = b""
        if self.proxy_protocol:
            hdr = proxyproto.encode("udp", (str(client[0]), int(str(client[1]))), local)
        flow = UdpFlow(self, client, s, cmsg, hdr, self.loop.now)
        self.flows[key] = flow
        self.loop.watch(flow.fd, flow.on_event, level_triggered=True)
        self.ctr[TOTAL] += 1
        self.ctr[UDP_FLOWS] = len(self.flows)
        return flow

    def sweep(self, now: float) -> None:
        """Drop flows idle for longer than the timeout."""
        limit = now - self.idle_timeout
        stale = [k for k, f in self.flows.items() if f.last < limit]
        for k in stale:
            self.flows.pop(k).close()
        if stale:
            self.ctr[UDP_FLOWS] = len(self.flows)

    def close(self) -> None:
        for f in self.flows.values():
            f.close()
        self.flows.clear()
        self.ctr[UDP_FLOWS] = 0
