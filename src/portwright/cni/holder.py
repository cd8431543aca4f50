"""The per-attachment holder process: host-port reservations and the ``::1`` relay.

A CNI plugin exits after ADD, but a reservation is a socket and must outlive it. So ADD starts
one small detached process per attachment. It binds each published host port (TCP listening,
UDP bound) with a drop-everything socket filter, as Docker's current placeholder does: no other
program can take the port, yet the socket never accepts a connection, because kernel NAT moves
the traffic to the container before it reaches the socket. Mappings the kernel cannot NAT
(``[::1]``: IPv6 has no route_localnet) are relayed by the same ProxyServer that ``portwright run``
uses, and the placeholders are the same drop-all sockets (``publish.reserve``).

The process is found again without any state file: its command line carries the owner tag
(``cni:<containerID>:<ifname>:<network>``) and the network name, and DEL/GC kill it by pid after
reading /proc.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from ..kernel.proc import set_process_name
from ..model import Mapping
from ..proxy.server import ProxyServer
from ..publish.reserve import bind_socket, make_placeholder

HOLDER_MODULE = "portwright.cni.holder"
# The comm shown by ps/top/ss, so an operator sees who holds the ports.
COMM = "pw-cni-holder"


@dataclass(frozen=True, slots=True)
class Binding:
    """One host socket the holder opens: a placeholder, or a relay listener when ``to`` is set."""

    proto: str
    ip: str
    port: int
    to_ip: str = ""
    to_port: int = 0

    @property
    def text(self) -> str:
        h = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{h}:{self.port}/{self.proto}"

    def to_json(self) -> dict[str, object]:
        return {
            "proto": self.proto,
            "ip": self.ip,
            "port": self.port,
            "to_ip": self.to_ip,
            "to_port": self.to_port,
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Binding:
        return cls(
            str(d["proto"]),
            str(d["ip"]),
            int(str(d["port"])),
            str(d.get("to_ip", "")),
            int(str(d.get("to_port", 0))),
        )


def open_socket(b: Binding, drop_all: bool) -> socket.socket:
    """Bind (and for TCP listen on) ``b``; raises OSError with the kernel's errno. A wildcard
    ``[::]`` socket is IPv6-only: the IPv4 half is its own binding."""
    sock = bind_socket(b.proto, ipaddress.ip_address(b.ip), b.port)
    return make_placeholder(sock) if drop_all else sock


def start_relay(relayed: list[tuple[Binding, socket.socket]]) -> ProxyServer:
    """Serve the bindings NAT cannot (``[::1]``) with portwright's ProxyServer, on the sockets
    already bound."""
    socks = {
        Mapping(
            b.proto,  # type: ignore[arg-type]
            ipaddress.ip_address(b.ip),
            b.port,
            ipaddress.ip_address(b.to_ip),
            b.to_port,
        ): s
        for b, s in relayed
    }
    srv = ProxyServer(list(socks), sockets=socks)
    srv.start()
    return srv


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=HOLDER_MODULE, description="portwright CNI port holder")
    p.add_argument("--owner", required=True, help="owner tag cni:<containerID>:<ifname>:<network>")
    p.add_argument("--network", default="", help="CNI network name (for operators)")
    p.add_argument("--ready-fd", type=int, required=True)
    p.add_argument("--bindings", required=True, help="JSON list of bindings")
    a = p.parse_args(argv)
    set_process_name(COMM)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    bindings = [Binding.from_json(d) for d in json.loads(a.bindings)]
    ready = os.fdopen(a.ready_fd, "w")
    held: list[socket.socket] = []
    relayed: list[tuple[Binding, socket.socket]] = []
    for b in bindings:
        try:
            s = open_socket(b, drop_all=not b.to_ip)
        except OSError as e:
            code = errno.errorcode.get(e.errno or 0, str(e.errno))
            ready.write(f"ERR {code} {b.text} {e.strerror}\n")
            ready.close()
            return 1
        held.append(s)
        if b.to_ip:
            relayed.append((b, s))
    if relayed:
        start_relay(relayed)
    ready.write("OK\n")
    ready.close()
    while True:
        signal.pause()


def holder_pids(owner: str | None = None, proc: str = "/proc") -> Iterator[tuple[int, str]]:
    """(pid, owner tag) of every live holder, optionally only those of ``owner``."""
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if HOLDER_MODULE.encode() not in args:
            continue
        try:
            tag = args[args.index(b"--owner") + 1].decode()
        except (ValueError, IndexError):
            continue
        if owner is None or tag == owner:
            yield int(entry), tag


if __name__ == "__main__":
    sys.exit(main())
