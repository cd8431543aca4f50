"""Links, addresses, routes and namespaces, through iproute2's ``ip -j``.

We drive the ``ip`` tool rather than a netlink library: it is on every host portwright runs on,
its JSON output is stable, its errors are the ones users already know, and ``ip netns add``
creates exactly the bind mount under /run/netns that ``ip netns exec`` expects. ``ip`` runs
through ``runner`` (a missing iproute2 is named, a hung command times out).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from . import runner


def ip(*args: str, ns: str | None = None, check: bool = True, json_out: bool = False) -> Any:
    """Run ``ip [-n NS] [-j] ARGS``; raise KernelError naming the command on failure (with
    ``check=False``, return None instead)."""
    cmd = ["ip"]
    if ns:
        cmd += ["-n", ns]
    if json_out:
        cmd.append("-j")
    cmd += list(args)
    p = runner.run(cmd)
    if p.returncode != 0:
        if not check:
            return None
        raise runner.failure(p)
    if json_out:
        return json.loads(p.stdout or "[]")
    return p.stdout


def link_exists(name: str, ns: str | None = None) -> bool:
    return ip("link", "show", "dev", name, ns=ns, check=False) is not None


def links(ns: str | None = None) -> list[dict[str, Any]]:
    return list(ip("link", "show", ns=ns, json_out=True))


def addresses(dev: str | None = None, ns: str | None = None) -> list[dict[str, Any]]:
    args = ["addr", "show"] + (["dev", dev] if dev else [])
    return list(ip(*args, ns=ns, json_out=True))


def used_prefixes() -> list[str]:
    """Every prefix the host already routes or has an address in (for subnet overlap checks)."""
    out: list[str] = []
    for fam in ("-4", "-6"):
        for r in ip(fam, "route", "show", "table", "all", json_out=True) or []:
            dst = r.get("dst", "")
            if dst and dst != "default" and r.get("type", "unicast") == "unicast":
                out.append(dst)
    for link in addresses():
        for a in link.get("addr_info", []):
            if a.get("family") in ("inet", "inet6") and a.get("scope") != "host":
                out.append(f"{a['local']}/{a['prefixlen']}")
    return out


def bridge_mac(name: str) -> str:
    """A fixed, locally administered unicast MAC for bridge ``name`` (derived from the name).

    A bridge whose address was never set takes the lowest MAC of its ports, so removing a
    sandbox could change the gateway's MAC under the other sandboxes' neighbour caches: their
    traffic to the gateway (DNS, egress) went to a MAC nobody had until the entry went stale.
    An address set explicitly (addr_assign_type "set") is kept, as Docker does for docker0."""
    digest = hashlib.sha256(name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, 0x50, *digest[:4]))


def create_bridge(name: str, addrs: list[str]) -> None:
    ip("link", "add", name, "address", bridge_mac(name), "type", "bridge")
    try:
        for a in addrs:
            if ":" in a:
                ip("-6", "addr", "add", a, "dev", name, "nodad")
            else:
                ip("addr", "add", a, "dev", name)
        ip("link", "set", name, "up")
    except BaseException:
        ip("link", "del", name, check=False)
        raise


def delete_link(name: str) -> None:
    ip("link", "del", name, check=False)


def netns_path(name: str) -> str:
    return f"/run/netns/{name}"


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def netns_add(name: str) -> None:
    ip("netns", "add", name)


def netns_delete(name: str) -> None:
    if netns_exists(name):
        ip("netns", "del", name, check=False)


def netns_list() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def create_veth(host_name: str, ns: str, bridge: str, mac: str | None) -> None:
    """A veth pair: host end enslaved to bridge (hairpin on), peer moved into ns as eth0."""
    args = ["link", "add", host_name, "type", "veth", "peer", "name", "eth0", "netns", ns]
    if mac:
        args += ["address", mac]
    ip(*args)
    try:
        ip("link", "set", host_name, "master", bridge)
        # Hairpin: a sandbox reaching its own published port through the host comes back out
        # the same bridge port; without hairpin the bridge would refuse to send it there.
        ip("link", "set", host_name, "type", "bridge_slave", "hairpin", "on")
        ip("link", "set", host_name, "up")
    except BaseException:
        ip("link", "del", host_name, check=False)
        raise


def configure_sandbox_ns(
    ns: str, addr4: str | None, gw4: str | None, addr6: str | None, gw6: str | None
) -> None:
    ip("link", "set", "lo", "up", ns=ns)
    if addr4:
        ip("addr", "add", addr4, "dev", "eth0", ns=ns)
    if addr6:
        ip("-6", "addr", "add", addr6, "dev", "eth0", "nodad", ns=ns)
    ip("link", "set", "eth0", "up", ns=ns)
    if gw4:
        ip("route", "add", "default", "via", gw4, ns=ns)
    if gw6:
        ip("-6", "route", "add", "default", "via", gw6, ns=ns)
