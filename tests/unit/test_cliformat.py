"""cliformat.py without root: Docker's words for durations and statuses, the PORTS column's
ranges, Docker-shaped inspect documents (PascalCase, RFC 3339), ps rows, --filter and --format."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
from typing import Any

import pytest

from portwright import cliformat
from portwright.errors import BadInput
from portwright.model import Mapping, Network, Sandbox
from portwright.spec import SandboxSpec, parse_sandbox_spec
from portwright.state import SandboxRecord

ip = ipaddress.ip_address
NOW = 1_800_000_000.0


def _rec(
    maps: tuple[Mapping, ...] = (),
    status: str = "running",
    created: float = NOW - 5,
    exit_code: int | None = None,
    name: str = "web",
    cmd: tuple[str, ...] = ("sleep", "60"),
    spec: SandboxSpec | None = None,
) -> SandboxRecord:
    sb = Sandbox(
        id="abcdef012345",
        name=name,
        network="pw0",
        netns=f"/run/netns/pw-{name}",
        veth="pwv1",
        ip4=ipaddress.IPv4Address("198.18.0.2"),
        ip6=ipaddress.IPv6Address("2001:2::2"),
        mac="02:00:00:00:00:02",
        mappings=maps,
    )
    return SandboxRecord(
        sb, status, 700, None, 701, None, cmd, spec or SandboxSpec(cmd=cmd), exit_code, None, created
    )


NET = Network(
    name="pw0",
    bridge="pw0",
    subnet4=ipaddress.IPv4Network("198.18.0.0/24"),
    gateway4=ipaddress.IPv4Address("198.18.0.1"),
    subnet6=ipaddress.IPv6Network("2001:2::/64"),
    gateway6=ipaddress.IPv6Address("2001:2::1"),
)


@pytest.mark.parametrize(
    ("secs", "want"),
    [
        (0.4, "Less than a second"),
        (1, "1 second"),
        (2, "2 seconds"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (180, "3 minutes"),
        (3599, "59 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (47 * 3600, "47 hours"),
        (3 * 86400, "3 days"),
        (20 * 86400, "2 weeks"),
        (90 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration_as_docker_says_it(secs: float, want: str) -> None:
    assert cliformat.human_duration(secs) == want


def test_status_words() -> None:
    assert cliformat.status_text(_rec(created=NOW - 1), NOW) == "Up 1 second"
    exited = dataclasses.replace(_rec(status="exited", exit_code=0), finished=NOW - 180)
    assert cliformat.status_text(exited, NOW) == "Exited (0) 3 minutes ago"
    older = _rec(status="exited", exit_code=0)  # a record from before exit times were kept
    assert cliformat.status_text(older, NOW) == "Exited (0)"
    assert cliformat.status_text(_rec(status="creating"), NOW) == "Creating"


def _range(host_ip: str, lo: int, hi: int, cport: int, proto: str = "tcp") -> tuple[Mapping, ...]:
    cip = ip("2001:2::2") if ":" in host_ip else ip("198.18.0.2")
    return tuple(Mapping(proto, ip(host_ip), p, cip, cport + p - lo) for p in range(lo, hi + 1))  # type: ignore[arg-type]


def test_ports_column_compacts_ranges() -> None:
    maps = _range("0.0.0.0", 8000, 8099, 8000) + _range("::", 8000, 8099, 8000)
    assert cliformat.ports_column(maps) == "0.0.0.0:8000-8099->8000-8099/tcp, [::]:8000-8099->8000-8099/tcp"
    # order does not matter; a gap, another protocol and a shifted container port start new runs
    mixed = _range("0.0.0.0", 9003, 9004, 90)[::-1] + _range("0.0.0.0", 9000, 9001, 90)
    mixed += _range("0.0.0.0", 9000, 9001, 90, "udp") + _range("127.0.0.1", 5432, 5432, 5432)
    assert cliformat.ports_column(mixed) == (
        "0.0.0.0:9000-9001->90-91/tcp, 0.0.0.0:9003-9004->90-91/tcp, "
        "0.0.0.0:9000-9001->90-91/udp, 127.0.0.1:5432->5432/tcp"
    )
    assert cliformat.ports_column(()) == ""


def _keys(doc: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (path, key) of the document's objects, but the keys of Docker's maps keyed by data
    (Ports by "80/tcp", Networks by network name, ExposedPorts)."""
    out: list[tuple[str, str]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if not path.endswith(("Ports", "Networks", "ExposedPorts", "HostConfig")):
                out.append((path, k))
            out += _keys(v, f"{path}.{k}")
    elif isinstance(doc, list):
        for v in doc:
            out += _keys(v, path)
    return out


def test_inspect_doc_is_pascal_case_with_rfc3339_created() -> None:
    spec = parse_sandbox_spec(["sleep", "60"], publish=["8080:80"], expose=["90"], env=["A=1"])
    rec = _rec(maps=_range("0.0.0.0", 8080, 8080, 80), spec=spec, created=NOW)
    doc = cliformat.inspect_doc(rec, NET)
    bad = [(p, k) for p, k in _keys(doc) if not k[:1].isupper()]
    assert bad == []
    assert datetime.datetime.fromisoformat(doc["Created"]).timestamp() == NOW
    assert doc["Created"].endswith("Z")
    ns = doc["NetworkSettings"]
    assert ns["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}
    assert ns["Networks"]["pw0"]["IPAddress"] == "198.18.0.2" == ns["IPAddress"]
    assert ns["Networks"]["pw0"]["GlobalIPv6Address"] == "2001:2::2"
    assert doc["Config"]["ExposedPorts"] == {"90/tcp": {}} and doc["Config"]["Env"] == ["A=1"]
    # the article's template and Docker's documented port template work on it
    tmpl = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    assert cliformat.render(tmpl, doc) == "198.18.0.2"
    assert cliformat.render('{{(index (index .NetworkSettings.Ports "80/tcp") 0).HostPort}}', doc) == "8080"
    json.dumps(doc)  # serializable as it is


def test_ps_row_and_command_truncation() -> None:
    rec = _rec(cmd=("sh", "-c", "while true; do echo hello; sleep 1; done"), created=NOW - 120)
    row = cliformat.ps_row(rec, NOW, no_trunc=False)
    assert row["Command"] == '"sh -c \'while true; …"' and len(row["Command"]) == 22
    assert cliformat.ps_row(rec, NOW, no_trunc=True)["Command"] == (
        "\"sh -c 'while true; do echo hello; sleep 1; done'\""
    )
    assert row["RunningFor"] == "2 minutes ago" and row["Status"] == "Up 2 minutes"
    assert row["CreatedAt"].endswith("+0000 UTC") and row["ID"] == "abcdef012345"


def test_filters() -> None:
    web = _rec(maps=_range("0.0.0.0", 8000, 8099, 8000), name="web-1")
    db = _rec(maps=_range("127.0.0.1", 5432, 5432, 5432), name="db", status="exited")
    f = cliformat.parse_filters
    assert [r.name for r in (web, db) if cliformat.matches(r, f(["name=web"]))] == ["web-1"]
    assert [r.name for r in (web, db) if cliformat.matches(r, f(["name=^db$"]))] == ["db"]
    assert [r.name for r in (web, db) if cliformat.matches(r, f(["status=exited"]))] == ["db"]
    assert [r.name for r in (web, db) if cliformat.matches(r, f(["publish=8050"]))] == ["web-1"]
    assert [r.name for r in (web, db) if cliformat.matches(r, f(["publish=5000-6000/tcp"]))] == ["db"]
    assert [r.name for r in (web, db) if cliformat.matches(r, f(["publish=5432/udp"]))] == []
    # the same key OR'd, different keys AND'd
    assert len([r for r in (web, db) if cliformat.matches(r, f(["name=web", "name=db"]))]) == 2
    assert [r.name for r in (web, db) if cliformat.matches(r, f(["name=web", "status=exited"]))] == []
    for bad in ("nope=1", "name", "status=sleeping", "publish=x", "publish=90-80"):
        with pytest.raises(BadInput, match="--filter"):
            f([bad])


def test_format_rows() -> None:
    rows = [
        {"ID": "a1", "Names": "web", "Ports": "0.0.0.0:80->80/tcp"},
        {"ID": "b2", "Names": "db", "Ports": ""},
    ]
    assert cliformat.format_rows("json", rows) == [
        '{"ID":"a1","Names":"web","Ports":"0.0.0.0:80->80/tcp"}',
        '{"ID":"b2","Names":"db","Ports":""}',
    ]
    assert cliformat.format_rows("{{.Names}}:{{.ID}}", rows) == ["web:a1", "db:b2"]
    assert cliformat.format_rows("table {{.Names}}\\t{{.Ports}}", rows) == [
        "NAMES   PORTS",
        "web     0.0.0.0:80->80/tcp",
        "db",
    ]
    with pytest.raises(BadInput, match=r"--format '\{\{.Nope\}\}'.*no field 'Nope'"):
        cliformat.format_rows("{{.Nope}}", rows)


def test_stats_show_a_nat_relay_as_loopback() -> None:
    maps = (
        Mapping("tcp", ip("0.0.0.0"), 8080, ip("198.18.0.2"), 80),
        Mapping("tcp", ip("::"), 8080, ip("2001:2::2"), 80),
    )
    counters = {"[::]:8080->80/tcp": {"total": 3}}
    nat = _rec(maps=maps)
    assert cliformat.relay_labels(nat, counters) == {"[::1]:8080->80/tcp": {"total": 3}}
    proxy = dataclasses.replace(nat, sandbox=dataclasses.replace(nat.sandbox, publish_mode="proxy"))
    assert cliformat.relay_labels(proxy, counters) == counters  # proxy mode: [::]:P is its own
    # an IPv4-only sandbox: kernel NAT cannot serve [::]:P, the relay serves every IPv6 client
    v4only = _rec(maps=(maps[0], Mapping("tcp", ip("::"), 8080, ip("198.18.0.2"), 80)))
    assert cliformat.relay_labels(v4only, counters) == counters
