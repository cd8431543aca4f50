"""diagnose: ruleset parsing and the packet walk, Docker parsing, who/ports/audit on recorded inputs.

The rulesets were recorded with ``nft -j list ruleset`` / ``nft -a list ruleset`` in a
throwaway namespace holding Docker 20.10's iptables-nft rules (userland-proxy=false: web
198.19.0.2 -p 9000:9000, db 198.19.0.3 -p 127.0.0.1:6380:6379, a leftover DNAT to 198.19.0.9,
INPUT policy drop) and, in the second file, portwright's own ``inet portwright`` table too.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from portwright.diagnose import audit as audit_mod
from portwright.diagnose import cli as dcli
from portwright.diagnose.docker import Container, DockerView, container_from_inspect, parse_docker_proxy
from portwright.diagnose.nftview import Packet, nat_entries, parse_ruleset, walk
from portwright.diagnose.ports import port_rows
from portwright.diagnose.snapshot import (
    DOCKER_PROXY,
    DOCKERD_PLACEHOLDER,
    PW_PROXY,
    PW_RESERVATION,
    Snapshot,
)
from portwright.diagnose.who import parse_port, render, who
from portwright.errors import BadInput
from portwright.kernel.sockets import Listener, Process
from portwright.model import Mapping, Sandbox
from portwright.spec import SandboxSpec
from portwright.state import SandboxRecord

DATA = Path(__file__).parent / "data"
ip = ipaddress.ip_address
HOST4 = ipaddress.IPv4Address("198.51.100.7")


def ruleset(name: str) -> Any:
    return parse_ruleset((DATA / f"{name}.json").read_text(), (DATA / f"{name}.nft").read_text())


def inspect_doc(
    name: str,
    cid: str,
    pid: int,
    ip4: str,
    ports: dict[str, Any],
    mode: str = "bridge",
    exposed: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The fields of ``docker inspect`` that diagnostics read, in Docker 20.10's shape."""
    nets = (
        {}
        if mode == "host"
        else {
            "bridge": {
                "IPAddress": ip4,
                "IPPrefixLen": 24,
                "Gateway": "198.19.0.1",
                "GlobalIPv6Address": "",
                "NetworkID": "f00",
            }
        }
    )
    if mode == "host":
        nets = {"host": {"IPAddress": "", "Gateway": "", "GlobalIPv6Address": ""}}
    return {
        "Id": cid,
        "Name": "/" + name,
        "State": {"Running": True, "Pid": pid},
        "Config": {"Image": "pwt-busybox", "ExposedPorts": {e: {} for e in exposed}},
        "HostConfig": {"NetworkMode": mode},
        "NetworkSettings": {"Ports": ports, "Networks": nets},
    }


WEB = container_from_inspect(
    inspect_doc(
        "web",
        "a" * 64,
        4100,
        "198.19.0.2",
        {"9000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "9000"}]},
        exposed=("9000/tcp",),
    )
)
DB = container_from_inspect(
    inspect_doc(
        "db", "b" * 64, 4200, "198.19.0.3", {"6379/tcp": [{"HostIp": "127.0.0.1", "HostPort": "6380"}]}
    )
)


def proc(pid: int, comm: str, cmd: str) -> Process:
    return Process(pid, comm, cmd)


def ln(proto: str, addr: str, port: int, *procs: Process, v6only: bool | None = None) -> Listener:
    return Listener(proto, ip(addr), port, 1000 + port, tuple(procs), v6only)


def snapshot(
    rs_name: str,
    listeners: list[Listener],
    containers: list[Container] | None = None,
    sandboxes: list[SandboxRecord] | None = None,
    inner: dict[str, list[Listener]] | None = None,
    alive: bool = True,
) -> Snapshot:
    dv = DockerView(
        containers=containers or [],
        available=containers is not None,
        networks={"bridge": [ipaddress.ip_network("198.19.0.0/24")]},
    )
    return Snapshot(
        listeners=listeners,
        ruleset=ruleset(rs_name),
        sandboxes=sandboxes or [],
        docker=dv,
        host4=HOST4,
        host6=None,
        host_if="eth0",
        local_addrs=(HOST4, ip("127.0.0.1"), ip("::1")),
        route_localnet={"docker0": 1, "eth0": 0},
        inner=lambda path: (inner or {}).get(path, []),
        alive=lambda rec: alive,
    )


DOCKERD = proc(900, "dockerd", "/usr/sbin/dockerd --storage-driver=vfs")
NGINX = proc(4101, "nginx", "nginx -g daemon off;")


# ---------------------------------------------------------------- ruleset
def test_docker_dnat_targets_come_from_the_text_listing() -> None:
    rs = ruleset("diagnose_docker_nat")
    entries = [e for e in nat_entries(rs) if e.hook == "prerouting"]
    got = {(e.proto, e.ports, str(e.to_addr), e.to_port, tuple(map(str, e.daddrs))) for e in entries}
    assert got == {
        ("tcp", ((9000, 9000),), "198.19.0.2", 9000, ()),
        ("tcp", ((6380, 6380),), "198.19.0.3", 6379, ("127.0.0.1/32",)),
        ("tcp", ((7777, 7777),), "198.19.0.9", 80, ()),
    }
    assert {e.hook for e in nat_entries(rs)} == {"prerouting", "output"}


def test_walk_docker_rules_per_family_and_origin() -> None:
    rs = ruleset("diagnose_docker_nat")
    out = walk(rs, Packet("output", "tcp", ip("127.0.0.1"), 9000))
    assert out.kind == "dnat" and (str(out.to_addr), out.to_port) == ("198.19.0.2", 9000)
    assert any("DOCKER" in t for t in out.trace) and out.assumed  # xt addrtype is an assumption
    assert walk(rs, Packet("output", "tcp", ip("::1"), 9000)).kind == "none"  # no ip6 nat
    leak = walk(rs, Packet("prerouting", "tcp", ip("127.0.0.1"), 6380, iif="eth0"))
    assert leak.kind == "dnat" and str(leak.to_addr) == "198.19.0.3"
    assert walk(rs, Packet("prerouting", "tcp", HOST4, 6380, iif="eth0")).kind == "none"
    assert walk(rs, Packet("prerouting", "tcp", HOST4, 9000, iif="docker0")).kind == "none"  # RETURN


def test_walk_portwright_maps_guard_and_owner_tag() -> None:
    rs = ruleset("diagnose_mixed")
    out = walk(rs, Packet("output", "tcp", ip("127.0.0.1"), 5432))
    assert out.kind == "dnat" and str(out.to_addr) == "198.18.0.2" and out.owner == "pw:abc123abc123"
    guarded = walk(rs, Packet("prerouting", "tcp", ip("127.0.0.1"), 5432, iif="eth0"))
    assert guarded.kind == "drop" and guarded.rule is not None and guarded.rule.chain == "guard"
    v6 = walk(rs, Packet("prerouting", "tcp", ip("2001:db8::5"), 8080, iif="eth0"))
    assert v6.kind == "dnat" and str(v6.to_addr) == "2001:2::2" and v6.to_port == 80
    # ::1 is returned early by portwright's publish chain (a proxy serves it), and Docker has no v6
    assert walk(rs, Packet("output", "tcp", ip("::1"), 8080)).kind == "none"
    tags = {e.owner for e in nat_entries(rs) if e.rule.table == "portwright"}
    assert tags == {"pw:abc123abc123"}


# ---------------------------------------------------------------- docker parsing
def test_container_from_inspect() -> None:
    assert WEB.name == "web" and WEB.pid == 4100 and WEB.addresses() == [ip("198.19.0.2")]
    assert [(p.proto, str(p.host_ip), p.host_port, p.container_port) for p in DB.published] == [
        ("tcp", "127.0.0.1", 6380, 6379)
    ]
    assert WEB.exposed == ((9000, "tcp"),)
    dv = DockerView(containers=[WEB, DB], available=True)
    assert dv.find("web") is WEB and dv.find("aaaa") is WEB and dv.by_ip(ip("198.19.0.3")) is DB


@pytest.mark.parametrize(
    "cmd,expect",
    [
        (
            "/usr/sbin/docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 9000 -container-ip 198.19.0.2 "
            "-container-port 9000",
            ("tcp", "0.0.0.0", 9000, "198.19.0.2", 9000),
        ),
        (
            "docker-proxy -proto udp -host-ip :: -host-port 53 -container-ip 198.19.0.4 -container-port 5353 "
            "-use-listen-fd",
            ("udp", "::", 53, "198.19.0.4", 5353),
        ),
        # the article's ps output, with the addresses left empty
        (
            "/usr/sbin/docker-proxy -proto tcp -host-ip -host-port 9001 -container-ip -container-port 9000",
            ("tcp", None, 9001, None, 9000),
        ),
    ],
)
def test_parse_docker_proxy(cmd: str, expect: tuple[Any, ...]) -> None:
    a = parse_docker_proxy(cmd)
    assert a is not None
    got = (
        a.proto,
        str(a.host_ip) if a.host_ip else None,
        a.host_port,
        str(a.container_ip) if a.container_ip else None,
        a.container_port,
    )
    assert got == expect


def test_parse_docker_proxy_rejects_other_programs() -> None:
    assert parse_docker_proxy("nginx -g daemon off;") is None


# ---------------------------------------------------------------- who
@pytest.mark.parametrize(
    "text,err", [("70000", "1-65535"), ("0", "1-65535"), ("80/tcpx", "tcpx"), ("http", "http")]
)
def test_parse_port_bad_input_is_one_line(text: str, err: str) -> None:
    with pytest.raises(BadInput) as e:
        parse_port(text)
    assert err in str(e.value) and "\n" not in str(e.value)


def test_parse_port() -> None:
    assert parse_port("53/UDP") == (53, "udp") and parse_port("8080") == (8080, "tcp")


def test_who_docker_nat_names_container_inner_listener_and_placeholder_difference() -> None:
    lns = [ln("tcp", "0.0.0.0", 9000, DOCKERD), ln("tcp", "::", 9000, DOCKERD, v6only=True)]
    snap = snapshot(
        "diagnose_docker_nat",
        lns,
        [WEB, DB],
        inner={"/proc/4100/ns/net": [ln("tcp", "0.0.0.0", 9000, NGINX)]},
    )
    rep = who(snap, 9000)
    assert rep.summary().startswith("container web")
    assert {h.kind for _, h in rep.holders} == {DOCKERD_PLACEHOLDER}
    by = {p.label: p for p in rep.paths}
    p4 = by["127.0.0.1"]
    assert p4.via == "dnat" and p4.target is not None and p4.target.name == "web"
    assert p4.inner is not None and p4.inner.listeners[0][0].processes[0].comm == "nginx"
    assert by[f"{HOST4} (other machines)"].target.name == "web"  # type: ignore[union-attr]
    p6 = by["[::1]"]
    assert p6.via == "socket" and p6.holder is not None and p6.holder.kind == DOCKERD_PLACEHOLDER
    assert any("[::1]" in d and "placeholder" in d for d in rep.differences)
    text = render(rep)
    assert "container web" in text and "nginx" in text
    json.dumps(rep.to_json())


def test_who_docker_proxy_parses_its_arguments() -> None:
    dp = proc(
        5000,
        "docker-proxy",
        "/usr/sbin/docker-proxy -proto tcp -host-ip 127.0.0.1 -host-port 6380 "
        "-container-ip 198.19.0.3 -container-port 6379",
    )
    rs_empty = "diagnose_docker_nat"
    snap = snapshot(
        rs_empty,
        [ln("tcp", "127.0.0.1", 6390, dp)],
        [WEB, DB],
        inner={"/proc/4200/ns/net": [ln("tcp", "0.0.0.0", 6379, proc(4201, "redis-server", "redis"))]},
    )
    rep = who(snap, 6390)
    h = rep.holders[0][1]
    assert h.kind == DOCKER_PROXY and h.container == "db" and h.proxy_to == (ip("198.19.0.3"), 6379)
    p4 = rep.paths[0]
    assert p4.target is not None and p4.target.name == "db"
    assert p4.inner is not None and p4.inner.listeners[0][0].processes[0].comm == "redis-server"


def test_who_inner_nothing_listening_is_said() -> None:
    snap = snapshot(
        "diagnose_docker_nat", [], [WEB], inner={"/proc/4100/ns/net": [ln("tcp", "127.0.0.1", 9000)]}
    )
    p4 = who(snap, 9000).paths[0]
    assert p4.inner is not None and not p4.inner.listeners and "nothing listens" in p4.inner.note


def test_who_nothing() -> None:
    rep = who(snapshot("diagnose_docker_nat", [], []), 12345)
    assert not rep.owned and rep.summary().startswith("nothing")
    assert all(p.via == "nothing" for p in rep.paths)


def _record(
    name: str,
    sid: str,
    mode: str,
    maps: tuple[Mapping, ...],
    network: str = "pw0",
    sup: int = 700,
    cmd_pid: int = 701,
    ip4: str = "198.18.0.2",
) -> SandboxRecord:
    sb = Sandbox(
        id=sid,
        name=name,
        network=network,
        netns=f"/run/netns/pw-{name}" if network != "host" else None,
        veth=None,
        ip4=ipaddress.IPv4Address(ip4) if network != "host" else None,
        publish_mode=mode,
        mappings=maps,
    )
    return SandboxRecord(
        sb, "running", sup, None, cmd_pid, None, ("x",), SandboxSpec(cmd=("x",)), None, None, 0.0
    )


M8080 = (
    Mapping("tcp", ip("0.0.0.0"), 8080, ip("198.18.0.2"), 80),
    Mapping("tcp", ip("::"), 8080, ip("2001:2::2"), 80),
    Mapping("tcp", ip("127.0.0.1"), 5432, ip("198.18.0.2"), 5432),
)


def test_who_portwright_nat_sandbox_reservation_and_v6_proxy() -> None:
    sup = proc(700, "portwright", "python -m portwright _supervise web1")
    rec = _record("web1", "abc123abc123", "nat", M8080)
    lns = [ln("tcp", "0.0.0.0", 8080, sup), ln("tcp", "::", 8080, sup, v6only=True)]
    snap = snapshot(
        "diagnose_mixed",
        lns,
        None,
        [rec],
        inner={"/run/netns/pw-web1": [ln("tcp", "0.0.0.0", 80, proc(702, "python3", "http.server"))]},
    )
    rep = who(snap, 8080)
    kinds = {h.kind for _, h in rep.holders}
    assert kinds == {PW_RESERVATION, PW_PROXY}
    by = {p.label: p for p in rep.paths}
    assert by["127.0.0.1"].owner_tag == "pw:abc123abc123" and by["127.0.0.1"].target.name == "web1"  # type: ignore[union-attr]
    six = by["[::1]"]
    # the nat publisher relays [::1] to the sandbox's IPv4 address, where the server listens
    assert six.holder is not None and six.holder.proxy_to == (ip("198.18.0.2"), 80)
    assert six.inner is not None and six.inner.listeners and not rep.differences


# ---------------------------------------------------------------- ports and audit
def test_ports_lists_docker_and_portwright_and_marks_stale() -> None:
    rec = _record("web1", "abc123abc123", "nat", M8080)
    snap = snapshot("diagnose_mixed", [], [WEB, DB], [rec])
    rows = port_rows(snap)
    owners = {(r.port, r.owner) for r in rows if r.mechanism == "nat"}
    assert {(9000, "web"), (6380, "db"), (8080, "web1"), (5432, "web1")} <= owners
    stale = [r for r in rows if r.stale]
    assert [(r.port, str(r.target_ip)) for r in stale] == [(7777, "198.19.0.9")]


def test_ports_shows_a_nat_sandboxs_v6_relay_as_loopback_not_a_second_owner() -> None:
    """Issue 17: in nat mode the supervisor's ``[::]:P`` socket only ever sees ``[::1]`` clients
    (NAT serves every other IPv6 destination), so ``ports`` shows it as ``[::1]:P``, loopback-only."""
    import dataclasses

    sup = proc(700, "portwright", "python -m portwright _supervise web1")
    rec = _record("web1", "abc123abc123", "nat", M8080)
    rec = dataclasses.replace(
        rec, sandbox=dataclasses.replace(rec.sandbox, ip6=ipaddress.IPv6Address("2001:2::2"))
    )
    lns = [ln("tcp", "0.0.0.0", 8080, sup), ln("tcp", "::", 8080, sup, v6only=True)]
    rows = [r for r in port_rows(snapshot("diagnose_mixed", lns, None, [rec])) if r.port == 8080]
    relay = [r for r in rows if r.mechanism == "proxy"]
    assert [(r.binding, r.external) for r in relay] == [("[::1]:8080", False)]
    assert not [r for r in rows if r.binding == "[::]:8080" and r.mechanism == "proxy"]


def codes(rep: audit_mod.AuditReport) -> set[tuple[str, str, str]]:
    return {(f.severity, f.code, f.subject) for f in rep.findings}


def test_audit_docker_host() -> None:
    lns = [
        ln("tcp", "0.0.0.0", 9000, DOCKERD),
        ln("tcp", "::", 9000, DOCKERD, v6only=True),
        ln("tcp", "127.0.0.1", 6380, DOCKERD),
    ]
    rep = audit_mod.audit(snapshot("diagnose_docker_nat", lns, [WEB, DB]))
    got = codes(rep)
    assert ("high", "loopback-leak", "tcp 127.0.0.1:6380") in got
    assert ("high", "stale", "tcp 0.0.0.0:7777") in got
    # 9000 is PHP-FPM/MinIO's port, so exposing it is high; INPUT policy drop does not cover DNAT
    assert ("high", "exposed", "tcp 0.0.0.0:9000") in got
    assert ("high", "input-bypass", "tcp 0.0.0.0:9000") in got
    assert any(c == "family-mismatch" and "[::1]" in s for _, c, s in got)
    assert ("medium", "placeholder", "tcp [::]:9000") in got
    assert ("info", "placeholder", "tcp 0.0.0.0:9000") in got
    leak = next(f for f in rep.findings if f.code == "loopback-leak")
    assert "docker0" in " ".join(leak.evidence) and "127.0.0.0/8" in leak.fix
    assert rep.worst() == "high"


def test_audit_allow_public_and_portwright_guard() -> None:
    rec = _record("web1", "abc123abc123", "nat", M8080)
    rep = audit_mod.audit(snapshot("diagnose_mixed", [], [WEB, DB], [rec]), allow_public={8080, 9000})
    got = codes(rep)
    assert not any(c == "exposed" and ":8080" in s for _, c, s in got)
    # portwright's guard chain drops 127/8 from other interfaces before any DNAT, so it also
    # closes Docker's 127.0.0.1:6380 leak on the same host
    assert not [s for _, c, s in got if c == "loopback-leak"]


def test_audit_stale_sandbox_whose_supervisor_died() -> None:
    rec = _record("gone", "abc123abc123", "nat", M8080)
    rep = audit_mod.audit(snapshot("diagnose_mixed", [], None, [rec], alive=False))
    got = codes(rep)
    assert ("high", "stale", "sandbox gone") in got
    assert ("high", "stale", "tcp 0.0.0.0:8080") in got
    assert not any(c == "exposed" for _, c, _s in got)  # a stale rule is reported as stale, once


def test_audit_undeclared_host_network_ports() -> None:
    host_c = container_from_inspect(
        inspect_doc("hostnet", "c" * 64, 4300, "", {}, mode="host", exposed=("8080/tcp",))
    )
    snap = snapshot(
        "diagnose_docker_nat",
        [
            ln("tcp", "0.0.0.0", 8080, proc(4301, "app", "app")),
            ln("tcp", "0.0.0.0", 6379, proc(4302, "redis-server", "redis")),
        ],
        [host_c],
    )
    snap.pidns = {4300: "pid:[1]", 4301: "pid:[1]", 4302: "pid:[1]"}
    got = codes(audit_mod.audit(snap))
    assert ("medium", "undeclared", "tcp 0.0.0.0:6379") in got
    assert not any(s == "tcp 0.0.0.0:8080" for _, c, s in got if c == "undeclared")


def test_cli_helpers() -> None:
    assert dcli.table(("A", "BB"), [("x", "y"), ("long", "z")]).splitlines() == [
        "A     BB",
        "x     y",
        "long  z",
    ]
    assert dcli._allow(["80,443", "8080"]) == {80, 443, 8080}
    with pytest.raises(BadInput):
        dcli._allow(["http"])
    assert dcli.paint("HIGH", "high") == "HIGH"  # not a tty under pytest
