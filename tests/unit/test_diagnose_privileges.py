"""audit's privilege findings (diagnose/privileges.py): --privileged, --allow-spoof, risky --cap-add."""

from __future__ import annotations

import ipaddress

from portwright.caps_model import parse_privileges
from portwright.diagnose.audit import audit
from portwright.diagnose.nftview import Ruleset
from portwright.diagnose.privileges import privilege_findings
from portwright.diagnose.snapshot import Snapshot
from portwright.model import Sandbox
from portwright.spec import SandboxSpec
from portwright.state import SandboxRecord


def rec(name: str, status: str = "running", **flags: object) -> SandboxRecord:
    sb = Sandbox(
        id=name * 3,
        name=name,
        network="pw0",
        netns=f"/run/netns/pw-{name}",
        veth=f"pwv{name}",
        ip4=ipaddress.IPv4Address("198.18.0.2"),
        mac="02:42:c6:12:00:02",
    )
    spec = SandboxSpec(cmd=("x",), privileges=parse_privileges(**flags))  # type: ignore[arg-type]
    return SandboxRecord(sb, status, 700, None, 701, None, ("x",), spec, None, None, 0.0)


def snap(*recs: SandboxRecord) -> Snapshot:
    return Snapshot(listeners=[], ruleset=Ruleset(), sandboxes=list(recs))


def test_defaults_give_no_finding() -> None:
    assert privilege_findings(snap(rec("a"), rec("b", cap_add=["KILL"]), rec("c", cap_drop=["ALL"]))) == []


def test_privileged_spoofable_and_net_admin_are_reported() -> None:
    got = privilege_findings(
        snap(rec("p", privileged=True), rec("s", allow_spoof=True), rec("n", cap_add=["NET_ADMIN", "KILL"]))
    )
    codes = {(sev, code, subject) for sev, code, subject, *_ in got}
    assert codes == {
        ("medium", "privileged", "sandbox p"),
        ("medium", "spoofable", "sandbox s"),
        ("low", "capabilities", "sandbox n"),
    }
    assert any(
        "NET_ADMIN" in msg and "KILL" not in msg for _, code, _, msg, *_ in got if code == "capabilities"
    )


def test_exited_sandboxes_are_not_reported_and_audit_includes_them() -> None:
    assert privilege_findings(snap(rec("p", status="exited", privileged=True))) == []
    rep = audit(snap(rec("p", privileged=True)))
    assert [f.code for f in rep.findings if f.subject == "sandbox p"] == ["privileged"]
