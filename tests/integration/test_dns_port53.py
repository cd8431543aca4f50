"""A publication of host port 53 on every address must not capture a network's queries to its
gateway resolver (issue 14). The gateway is a local address, so before the prerouting rule
"a bridge's own gateway, port 53, is the resolver's" the publish maps DNATed every sandbox's DNS
query to the publisher. Run inside a throwaway namespace playing the host (hostns.py), so the
machine's own port 53 is never published. Real dig, real nft, real resolver.

The publication is put in the maps through the firewall seam, not with ``run -p 53:53/udp``:
while the resolver listens on a gateway, the publisher's own bind of 0.0.0.0:53 (the kernel's
port check) is refused, so through ``run`` the map entry only exists when it was made while no
resolver listened (a resolver restarted after it, another state directory's publication)."""

from __future__ import annotations

import json
import secrets
import sys
import textwrap
import time

import pytest
from hostns import HostNS, host_namespace

from conftest import need, sh
from portwright.owners import sandbox_owner

pytestmark = pytest.mark.integration

TRAP_ADDR = "198.18.99.99"  # what the publisher answers to every question
TRAP = textwrap.dedent(
    f"""
    import socket, dns.message, dns.rrset
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 53))
    while True:
        data, peer = s.recvfrom(4096)
        try:
            q = dns.message.from_wire(data)
        except Exception:
            continue
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 5, "IN", "A", "{TRAP_ADDR}"))
        s.sendto(r.to_wire(), peer)
    """
)


PUBLISH_53 = textwrap.dedent(
    """
    import ipaddress, sys
    from portwright.firewall.backend import default_firewall
    from portwright.model import ANY4, Mapping
    m = Mapping("udp", ANY4, 53, ipaddress.ip_address(sys.argv[2]), 53)
    default_firewall().publish(sys.argv[1], [m], flush_udp=False)
    """
)


def _answers(h: HostNS, net: str, *args: str) -> list[str]:
    """dig as the CMD of a fresh foreground sandbox on ``net`` (the simplest way into a sandbox of
    a namespace playing the host: its /run/netns entries are not visible from here)."""
    p = h.pw("run", "--rm", "--network", net, "dig", "+short", "+time=3", "+tries=2", *args, check=False)
    return sorted(p.stdout.split())


def test_port_53_published_on_every_address_leaves_the_gateway_to_the_resolver() -> None:
    need("dig", "dnsutils")
    with host_namespace("pwd53") as h:
        (h.etc / "resolv.conf").write_text("")  # no upstreams: nothing is forwarded anywhere
        net = "n" + secrets.token_hex(3)
        trap = "t" + secrets.token_hex(3)
        h.pw("network", "create", net)
        h.pw("run", "-d", "--name", trap, "--network", net, sys.executable, "-c", TRAP)
        doc = json.loads(h.pw("inspect", trap).stdout)[0]
        trap4 = doc["NetworkSettings"]["IPAddress"]
        h.run(sys.executable, "-c", PUBLISH_53, sandbox_owner(doc["Id"]), trap4)  # 0.0.0.0:53/udp
        gw = json.loads(h.pw("network", "inspect", net).stdout)[0]["IPAM"]["Config"][0]["Gateway"]
        ext, _, host4 = h.external()
        # The published port works from outside: the host's address, port 53, is the trap's.
        deadline = time.monotonic() + 20
        while (got := _ext_answers(ext, host4)) != [TRAP_ADDR] and time.monotonic() < deadline:
            time.sleep(0.3)
        assert got == [TRAP_ADDR]
        # A sandbox of the network asking its gateway gets the resolver, which knows the names.
        assert _answers(h, net, f"@{gw}", trap) == [trap4]
        assert _answers(h, net, trap) == [trap4]  # through its resolv.conf: the same gateway
        rules = h.run("nft", "list", "chain", "inet", "portwright", "prerouting").stdout
        assert "th dport 53 return" in rules


def _ext_answers(ext: str, host4: str) -> list[str]:
    p = sh("dig", "+short", "+time=2", "+tries=1", f"@{host4}", "anything.example", ns=ext, check=False)
    return sorted(p.stdout.split())
