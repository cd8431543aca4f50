"""``bench --scale`` shape ``nft-only``: the firewall library alone, in throwaway namespaces.

Owns a three-namespace topology (``pwb-fw-{h,b,x}-TAG``): a "host" namespace with a bridge, one
backend namespace on it, and an "external" client namespace routed to the host, all with
addresses from 198.18.220.0/23 that exist only inside those namespaces. Nothing touches the real
host's nftables table. For N ports it times one ``Firewall.publish`` of N mappings and one
``unpublish`` (each one nft transaction, including the table read and the clash check), and runs
iperf3 from the external namespace to the first and the last published port, so the map lookup is
shown to cost the same for every port. Without the sandbox and the CLI around it, this is the
firewall's own share of ``nat``'s setup and teardown times.

It replaces ``python -m portwright.firewall.bench``; ``NftLab.close`` removes everything, also
after a failure or Ctrl-C (the bench lab calls it from its cleanups).
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from typing import Any

from ..errors import KernelError
from ..firewall.backend import default_firewall
from ..model import Mapping, Network
from . import iperf3
from .driver import Child, run, spawn

HOST_EXT4, EXT4 = "198.18.220.1", "198.18.220.2"
GW4, BACKEND4 = "198.18.221.1", "198.18.221.2"
HOST_FIRST_PORT = 20000
CONTAINER_FIRST_PORT = 30000


def mappings(n: int) -> list[Mapping]:
    """``n`` TCP ports 0.0.0.0:20000+i -> backend:30000+i."""
    any4 = ipaddress.IPv4Address(0)
    backend = ipaddress.IPv4Address(BACKEND4)
    return [
        Mapping(
            proto="tcp",
            host_ip=any4,
            host_port=HOST_FIRST_PORT + i,
            container_ip=backend,
            container_port=CONTAINER_FIRST_PORT + i,
        )
        for i in range(n)
    ]


def topology_commands(host: str, backend: str, ext: str) -> list[list[str]]:
    """The ``ip`` and ``sysctl`` commands that build the three namespaces (pure, for tests)."""
    cmds = [["ip", "netns", "add", n] for n in (host, backend, ext)]
    cmds += [["ip", "-n", n, "link", "set", "lo", "up"] for n in (host, backend, ext)]
    return cmds + [
        ["ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ["ip", "-n", host, "link", "add", "pwbench0", "type", "bridge"],
        ["ip", "-n", host, "addr", "add", f"{GW4}/24", "dev", "pwbench0"],
        ["ip", "-n", host, "link", "set", "pwbench0", "up"],
        ["ip", "-n", host, "link", "add", "pwbv0", "type", "veth", "peer", "name", "eth0", "netns", backend],
        ["ip", "-n", host, "link", "set", "pwbv0", "master", "pwbench0", "up"],
        ["ip", "-n", backend, "addr", "add", f"{BACKEND4}/24", "dev", "eth0"],
        ["ip", "-n", backend, "link", "set", "eth0", "up"],
        ["ip", "-n", backend, "route", "add", "default", "via", GW4],
        ["ip", "-n", host, "link", "add", "pwbx0", "type", "veth", "peer", "name", "eth0", "netns", ext],
        ["ip", "-n", host, "addr", "add", f"{HOST_EXT4}/24", "dev", "pwbx0"],
        ["ip", "-n", host, "link", "set", "pwbx0", "up"],
        ["ip", "-n", ext, "addr", "add", f"{EXT4}/24", "dev", "eth0"],
        ["ip", "-n", ext, "link", "set", "eth0", "up"],
        ["ip", "-n", ext, "route", "add", "default", "via", HOST_EXT4],
    ]


def _check(argv: list[str]) -> None:
    p = run(argv, timeout=60)
    if not p.ok:
        raise KernelError(" ".join(argv), p.why())


class NftLab:
    """The throwaway namespaces and the firewall inside the "host" one."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.host, self.backend, self.ext = (f"pwb-fw-{r}-{tag}" for r in ("h", "b", "x"))
        self.net = Network(
            name="bench",
            bridge="pwbench0",
            subnet4=ipaddress.IPv4Network("198.18.221.0/24"),
            gateway4=ipaddress.IPv4Address(GW4),
        )
        self.created = False
        self.fw = default_firewall(self.host)

    def open(self) -> None:
        self.created = True
        for argv in topology_commands(self.host, self.backend, self.ext):
            _check(argv)
        self.fw.ensure_base()
        self.fw.add_network(self.net)

    def close(self) -> list[str]:
        """Delete the namespaces (their nft table, links and addresses go with them)."""
        errors: list[str] = []
        if not self.created:
            return errors
        for n in (self.ext, self.backend, self.host):
            p = run(["ip", "netns", "del", n], timeout=60)
            if not p.ok and "No such file" not in p.stderr:
                errors.append(f"ip netns del {n}: {p.why()}")
        self.created = False
        return errors

    def _iperf(self, port: int, seconds: float, streams: int) -> iperf3.IperfResult:
        cmd = iperf3.client_command(HOST_EXT4, port, streams, seconds, False)
        cmd[1:1] = ["--connect-timeout", "3000"]
        p = run(["ip", "netns", "exec", self.ext, *cmd], timeout=seconds + 30)
        if p.timed_out:
            return iperf3.parse("", -1, "iperf3 client timed out")
        return iperf3.parse(p.stdout, p.returncode, p.stderr)

    def measure(self, n: int, seconds: float, streams: int, row: dict[str, Any]) -> None:
        """Fill a scale row for ``n`` ports: publish and unpublish times, first and last port."""
        maps = mappings(n)
        ports = sorted({maps[0].container_port, maps[-1].container_port})
        servers: list[Child] = [
            spawn(["ip", "netns", "exec", self.backend, *iperf3.server_command(p)]) for p in ports
        ]
        owner = f"pw:bench-{secrets.token_hex(4)}"
        published = False
        try:
            time.sleep(0.3)  # the servers bind while nothing is published yet
            t0 = time.monotonic()
            self.fw.publish(owner, maps)
            published = True
            row["setup_s"] = time.monotonic() - t0
            row["setup_note"] = "one nft transaction (firewall library: table read, clash check, publish)"
            first = self._iperf(maps[0].host_port, seconds, streams)
            last = self._iperf(maps[-1].host_port, seconds, streams) if n > 1 else first
            row.update(
                first=first.to_json(),
                last=last.to_json(),
                first_gbit=first.gbit_per_second,
                last_gbit=last.gbit_per_second,
            )
            if first.ok and last.ok and first.gbit_per_second:
                row["last_vs_first"] = (last.gbit_per_second or 0) / first.gbit_per_second
            bad = [r.error or "failed" for r in (first, last) if not r.ok]
            row["ok"] = not bad
            row["error"] = "; ".join(bad) or None
            t0 = time.monotonic()
            self.fw.unpublish(owner)
            published = False
            row["teardown_s"] = time.monotonic() - t0
            row["teardown_note"] = "one nft transaction (unpublish by owner tag)"
        finally:
            for s in servers:
                s.stop(timeout=5)
            if published:
                self.fw.unpublish(owner)
