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

It also keeps its attachment's firewall entries (issue 13). ADD publishes them right after the
holder is ready, then writes exactly what it published (the NAT mappings and the tagged rules) to
a pipe the holder reads (``--entries-fd``, ``told_message``). The holder subscribes to nftables
events before it reads that message, compares the table with it (``Keeper``) and from then on puts
back whatever a firewall reload removed, through the same ``Firewall`` as ADD. It is told rather
than left to learn its entries from its first look at the table: an entry deleted between ADD's
commit and that first look would otherwise never be known, so never restored. DEL and a failed ADD
stop the holder before removing the entries, so it never restores what is being taken down.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import PortwrightError
from ..firewall import health, rules
from ..kernel.proc import argvs, set_process_name
from ..model import Mapping
from ..proxy.server import ProxyServer
from ..publish.reserve import bind_socket, make_placeholder
from ..recovery import FirewallWatch

if TYPE_CHECKING:
    from ..firewall.backend import Firewall

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
    p.add_argument("--entries-fd", type=int, required=True, help="ADD writes what it published here")
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
    keep_firewall(a.owner, a.entries_fd)
    return 0


Cmd = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Told:
    """What ADD published for the attachment: its NAT mappings and its tagged rules (the
    commands ``Firewall.publish`` was given as ``extra_rules``)."""

    nat: tuple[Mapping, ...]
    rules: tuple[Cmd, ...]


def told_message(nat: Sequence[Mapping], extra_rules: Sequence[Cmd]) -> bytes:
    """ADD's message to the holder (pure): one JSON object."""
    return json.dumps({"nat": [m.to_json() for m in nat], "rules": list(extra_rules)}).encode()


def parse_told(data: bytes) -> Told | None:
    """The message read back (pure); None when ADD wrote nothing (it published no NAT, or it
    failed before publishing: the holder is then stopped) or something malformed."""
    if not data.strip():
        return None
    try:
        d = json.loads(data)
        nat = tuple(Mapping.from_json(m) for m in d["nat"])
        extra = d["rules"]
        if not isinstance(extra, list) or not all(isinstance(c, dict) for c in extra):
            return None
    except (ValueError, KeyError, TypeError):
        return None
    return Told(nat, tuple(extra))


class Keeper:
    """An attachment's firewall entries, as ADD published them, and putting back what is gone."""

    def __init__(self, owner: str, fw: Firewall, told: Told) -> None:
        self.owner = owner
        self.fw = fw
        self.nat = list(told.nat)
        self.rules = list(told.rules)

    def check(self) -> list[str]:
        """Re-apply the entries if any is missing from the table; returns what was put back."""
        table = self.fw.table()
        missing = health.missing_base(table) + health.missing_publication(self.owner, self.nat, table)
        if len(rules.owner_rules(table, self.owner)) < len(self.rules):
            missing.append(f"{len(self.rules)} rule(s) tagged {rules.owner_tag(self.owner)}")
        if missing:
            self.fw.ensure_base()
            self.fw.publish(self.owner, self.nat, flush_udp=False, extra_rules=self.rules)
        return missing


def read_all(fd: int) -> bytes:
    """Everything written to ``fd`` until its writer closes it (or exits)."""
    with os.fdopen(fd, "rb") as f:
        return f.read()


def keep_firewall(owner: str, entries_fd: int) -> None:
    """Wait for SIGTERM, putting back the attachment's entries when nftables changes."""
    from ..firewall.backend import default_firewall

    # Subscribed before the message is read and the table is first compared with it: every
    # change after that first read is an event, every change before it is seen by the read.
    watch = FirewallWatch()
    told = parse_told(read_all(entries_fd))
    if told is None or not (told.nat or told.rules):
        watch.close()
        while True:  # nothing of ours in the table to keep: only the sockets, until SIGTERM
            signal.pause()
    keeper = Keeper(owner, default_firewall(), told)
    watch.due = 0.0  # compare now: a reload may already have taken something
    while True:
        ready, _, _ = select.select(list(watch.fds()), [], [], max(0.0, watch.due - time.monotonic()))
        watch.ready(ready)
        if watch.take():
            try:
                for what in keeper.check():
                    print(f"portwright-cni holder {owner}: restored {what}", file=sys.stderr)
            except PortwrightError as e:
                print(f"portwright-cni holder {owner}: not restored: {e}", file=sys.stderr)


def holder_pids(owner: str | None = None) -> Iterator[tuple[int, str]]:
    """(pid, owner tag) of every live holder, optionally only those of ``owner``."""
    for pid, args in argvs():
        if HOLDER_MODULE.encode() not in args:
            continue
        try:
            tag = args[args.index(b"--owner") + 1].decode()
        except (ValueError, IndexError):
            continue
        if owner is None or tag == owner:
            yield pid, tag


if __name__ == "__main__":
    sys.exit(main())
