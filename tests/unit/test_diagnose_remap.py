"""host-remap in the diagnostics (issue 12), pure over a Snapshot: ``who`` names the remapped
sandbox, its CMD pid and the inner port; ``audit`` shows the remapping, and a sandbox whose bind
programs are no longer pinned as degraded."""

from __future__ import annotations

import ipaddress

from portwright.cliformat import inspect_doc
from portwright.diagnose.nftview import parse_ruleset
from portwright.diagnose.remap import remap_findings
from portwright.diagnose.snapshot import Snapshot
from portwright.diagnose.who import render, who
from portwright.model import ANY4, Mapping, Sandbox
from portwright.spec import SandboxSpec
from portwright.state import SandboxRecord

MAPS = (
    Mapping("tcp", ipaddress.IPv4Address("127.0.0.1"), 8080, ANY4, 80),
    Mapping("udp", ANY4, 5353, ANY4, 53),
)


def _snap(links: list[str] | None, status: str = "running") -> Snapshot:
    sb = Sandbox("abc123abc123", "web", "host", None, None, publish_mode="host-remap", mappings=MAPS)
    rec = SandboxRecord(sb, status, 700, None, 701, None, ("x",), SandboxSpec(cmd=("x",)), None, None, 0.0)
    return Snapshot(
        listeners=[],
        ruleset=parse_ruleset({"nftables": []}),
        sandboxes=[rec],
        alive=lambda r: r.status == "running",
        remap_links=lambda sid: links,
    )


def test_who_names_the_sandbox_its_cmd_pid_and_the_inner_port() -> None:
    rep = who(_snap(["pw_bind4", "pw_bind6"]), 8080)
    assert rep.remapped == ["sandbox web (CMD pid 701): bound as :80, remapped at bind() to 127.0.0.1:8080"]
    assert "├─ remapped: sandbox web (CMD pid 701): bound as :80, remapped at bind()" in render(rep)
    assert (
        who(_snap([]), 5353, "udp").remapped[0].endswith("bound as :53, remapped at bind() to 0.0.0.0:5353")
    )
    assert who(_snap([]), 8081).remapped == []
    assert who(_snap([], status="exited"), 8080).remapped == []


def test_audit_shows_the_remapping_and_missing_programs() -> None:
    (f,) = remap_findings(_snap(["pw_bind4", "pw_bind6", "pw_connect4"]))
    assert f[:3] == ("info", "remapped", "sandbox web")
    assert ":80/tcp -> 127.0.0.1:8080, :53/udp -> 0.0.0.0:5353" in f[3] and "CMD pid 701" in f[3]
    (f,) = remap_findings(_snap(["pw_bind6"]))
    assert f[:3] == ("high", "degraded", "sandbox web") and "pw_bind4 programs are no longer pinned" in f[3]
    assert remap_findings(_snap(None))[0][1] == "remapped"  # bpffs unreadable: nothing is claimed
    assert remap_findings(_snap([], status="exited")) == []


def test_inspect_shows_the_remapping_and_what_else_is_bindable() -> None:
    doc = inspect_doc(_snap([]).sandboxes[0], None)
    assert doc["HostRemap"]["Remapped"] == [
        "bound as :80/tcp, remapped at bind() to 127.0.0.1:8080",
        "bound as :53/udp, remapped at bind() to 0.0.0.0:5353",
    ]
    assert doc["HostRemap"]["AlsoBindable"][0] == "0"
