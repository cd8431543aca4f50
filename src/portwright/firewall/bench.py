"""Benchmark of the NAT firewall layer: publish/unpublish time at scale, first vs last port.

Runs entirely in throwaway network namespaces (``pwt-fwbench-*``), so it never touches the host's
table: a "host" namespace with a bridge and one backend namespace, plus an "external" client
namespace routed to the host. It measures

* the wall time of ``nft.publish`` and ``nft.unpublish`` for 1, 1,000 and 10,000 ports in one
  owner (including the table read that checks for conflicts), and
* iperf3 throughput from the external namespace to the first and to the last of 10,000
  published ports, interleaved, to show that a map lookup costs the same for every port.

Run it as root: ``python -m portwright.firewall.bench [--seconds 3]``. This is a measurement,
not a test; nothing asserts on the numbers.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from portwright.errors import MissingTool, NeedRoot
from portwright.firewall import nft
from portwright.model import Mapping, Network

HOST_EXT4, EXT4 = "198.18.220.1", "198.18.220.2"
GW4, BACKEND4 = "198.18.221.1", "198.18.221.2"
FIRST_PORT = 20000
IPERF_PORT = 5201


@dataclass(frozen=True)
class Ns:
    host: str
    backend: str
    ext: str
    net: Network


def _sh(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)


@contextmanager
def topology() -> Iterator[Ns]:
    """host (bridge pwbench0) -- backend; ext -- host; all removed on exit."""
    tag = secrets.token_hex(3)
    host, backend, ext = (f"pwt-fwbench-{r}-{tag}" for r in ("h", "b", "x"))
    net = Network(name="bench", bridge="pwbench0", subnet4=ipaddress.IPv4Network("198.18.221.0/24"),
                  gateway4=ipaddress.IPv4Address(GW4))
    try:
        for n in (host, backend, ext):
            _sh("ip", "netns", "add", n)
            _sh("ip", "-n", n, "link", "set", "lo", "up")
        _sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=host)
        _sh("ip", "-n", host, "link", "add", "pwbench0", "type", "bridge")
        _sh("ip", "-n", host, "addr", "add", f"{GW4}/24", "dev", "pwbench0")
        _sh("ip", "-n", host, "link", "set", "pwbench0", "up")
        _sh("ip", "-n", host, "link", "add", "pwbv0", "type", "veth", "peer", "name", "eth0", "netns", backend)
        _sh("ip", "-n", host, "link", "set", "pwbv0", "master", "pwbench0", "up")
        _sh("ip", "-n", backend, "addr", "add", f"{BACKEND4}/24", "dev", "eth0")
        _sh("ip", "-n", backend, "link", "set", "eth0", "up")
        _sh("ip", "-n", backend, "route", "add", "default", "via", GW4)
        _sh("ip", "-n", host, "link", "add", "pwbx0", "type", "veth", "peer", "name", "eth0", "netns", ext)
        _sh("ip", "-n", host, "addr", "add", f"{HOST_EXT4}/24", "dev", "pwbx0")
        _sh("ip", "-n", host, "link", "set", "pwbx0", "up")
        _sh("ip", "-n", ext, "addr", "add", f"{EXT4}/24", "dev", "eth0")
        _sh("ip", "-n", ext, "link", "set", "eth0", "up")
        _sh("ip", "-n", ext, "route", "add", "default", "via", HOST_EXT4)
        nft.ensure_base(netns=host)
        nft.add_network(net, netns=host)
        yield Ns(host=host, backend=backend, ext=ext, net=net)
    finally:
        for n in (ext, backend, host):
            _sh("ip", "netns", "del", n, check=False)


def _mappings(n: int, container_port: int | None = None) -> list[Mapping]:
    any4 = ipaddress.IPv4Address(0)
    backend = ipaddress.IPv4Address(BACKEND4)
    return [Mapping(proto="tcp", host_ip=any4, host_port=FIRST_PORT + i, container_ip=backend,
                    container_port=container_port or FIRST_PORT + i) for i in range(n)]


def time_publish(ns: Ns, counts: Sequence[int] = (1, 1000, 10000), repeat: int = 3) -> list[dict[str, float]]:
    """Best-of-``repeat`` seconds to publish and to unpublish ``n`` ports in one owner."""
    out: list[dict[str, float]] = []
    for n in counts:
        maps = _mappings(n)
        pub: list[float] = []
        unpub: list[float] = []
        for _ in range(repeat):
            owner = "pw:" + secrets.token_hex(6)
            t0 = time.perf_counter()
            nft.publish(owner, maps, netns=ns.host)
            t1 = time.perf_counter()
            nft.unpublish(owner, netns=ns.host)
            t2 = time.perf_counter()
            pub.append(t1 - t0)
            unpub.append(t2 - t1)
        out.append({"ports": n, "publish_s": min(pub), "unpublish_s": min(unpub)})
    return out


def first_vs_last(ns: Ns, n: int = 10000, seconds: float = 3, rounds: int = 2) -> dict[str, list[float]]:
    """iperf3 Gbit/s from ext to the first and the last of ``n`` published ports, interleaved."""
    if shutil.which("iperf3") is None:
        raise MissingTool("iperf3", "iperf3")
    owner = "pw:" + secrets.token_hex(6)
    server = subprocess.Popen(["ip", "netns", "exec", ns.backend, "iperf3", "-s", "-p", str(IPERF_PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result: dict[str, list[float]] = {"first": [], "last": []}
    try:
        time.sleep(0.5)
        nft.publish(owner, _mappings(n, container_port=IPERF_PORT), netns=ns.host)
        for _ in range(rounds):
            for which, port in (("first", FIRST_PORT), ("last", FIRST_PORT + n - 1)):
                p = _sh("iperf3", "-J", "-c", HOST_EXT4, "-p", str(port), "-t", str(seconds), ns=ns.ext)
                bps = json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"]
                result[which].append(bps / 1e9)
    finally:
        server.kill()
        server.wait()
        nft.unpublish(owner, netns=ns.host)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=3.0, help="iperf3 duration per run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved first/last iperf3 pairs")
    ap.add_argument("--no-iperf", action="store_true", help="only time publish/unpublish")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise NeedRoot("the firewall benchmark (network namespaces, nftables)")
    with topology() as ns:
        print("ports   publish_s  unpublish_s")
        for row in time_publish(ns):
            print(f"{int(row['ports']):>5}   {row['publish_s']:9.3f}  {row['unpublish_s']:11.3f}")
        if not args.no_iperf:
            r = first_vs_last(ns, seconds=args.seconds, rounds=args.rounds)
            first, last = sum(r["first"]) / len(r["first"]), sum(r["last"]) / len(r["last"])
            runs = {k: " ".join(f"{x:.2f}" for x in v) for k, v in r.items()}
            print(f"iperf3 to port 1 of 10000: {first:.2f} Gbit/s (runs: {runs['first']})")
            print(f"iperf3 to port 10000 of 10000: {last:.2f} Gbit/s (runs: {runs['last']})")
            print(f"last/first ratio: {last / first:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
