"""caps_model: Docker's capability rules, flag parsing, the child's plan, audit's findings."""

from __future__ import annotations

import pytest

from portwright import caps_model as cm
from portwright.errors import BadInput
from portwright.spec import SandboxSpec, parse_sandbox_spec

LAST = 40


def eff(**kw: object) -> frozenset[str]:
    return cm.effective(cm.parse_privileges(**kw), LAST)  # type: ignore[arg-type]


def test_default_is_dockers_without_net_raw() -> None:
    got = eff()
    assert got == set(cm.DOCKER_DEFAULT) - {"NET_RAW"}
    assert "NET_ADMIN" not in got and "SYS_ADMIN" not in got
    assert cm.mask(got) == 0xA80405FB  # as CapEff reads in a default sandbox


def test_add_drop_all_and_names() -> None:
    assert "NET_ADMIN" in eff(cap_add=["net_admin"])
    assert "NET_ADMIN" in eff(cap_add=["CAP_NET_ADMIN"])
    assert "CHOWN" not in eff(cap_drop=["chown"])
    assert eff(cap_drop=["ALL"]) == frozenset()
    assert eff(cap_drop=["ALL"], cap_add=["NET_BIND_SERVICE"]) == {"NET_BIND_SERVICE"}
    assert eff(cap_add=["ALL"], cap_drop=["SYS_ADMIN"]) == set(cm.CAPABILITIES) - {"SYS_ADMIN"}
    assert "KILL" in eff(cap_add=["KILL"], cap_drop=["KILL"])  # an add wins over a drop (Docker)
    assert eff(privileged=True, cap_drop=["ALL"]) == set(cm.CAPABILITIES)
    assert "CHECKPOINT_RESTORE" not in cm.effective(cm.Privileges(privileged=True), 39)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"cap_add": ["NET_WIZARD"]}, "--cap-add 'NET_WIZARD'"),
        ({"cap_drop": [""]}, "--cap-drop"),
        ({"user": "abc"}, "--user 'abc'"),
        ({"user": "1:x"}, "--user '1:x'"),
        ({"user": "-1"}, "--user '-1'"),
        ({"user": str(2**32)}, "--user"),
    ],
)
def test_bad_flags_name_themselves(kw: dict[str, object], needle: str) -> None:
    with pytest.raises(BadInput, match=needle.replace("(", r"\(")):
        cm.parse_privileges(**kw)  # type: ignore[arg-type]


def test_user_and_plan() -> None:
    p = cm.parse_privileges(user="65534")
    assert (p.uid, p.gid) == (65534, None)
    plan = cm.plan_for(p, LAST)
    assert (plan.uid, plan.gid, plan.no_new_privs) == (65534, 0, True)
    assert cm.parse_privileges(user="1000:100").user_text == "1000:100"


def test_plan_keeps_net_raw_in_bounding_only_unless_dropped() -> None:
    raw = cm.CAPABILITIES["NET_RAW"]
    plan = cm.plan_for(cm.Privileges(), LAST)
    assert plan.keep is not None and plan.bounding is not None
    assert raw not in plan.keep and raw in plan.bounding
    dropped = cm.plan_for(cm.parse_privileges(cap_drop=["NET_RAW"]), LAST)
    assert dropped.bounding is not None and raw not in dropped.bounding
    none = cm.plan_for(cm.parse_privileges(cap_drop=["ALL"]), LAST)
    assert none.keep == frozenset() and none.bounding == frozenset()
    priv = cm.plan_for(cm.Privileges(privileged=True), LAST)
    assert priv.keep is None and priv.bounding is None and not priv.no_new_privs


def test_names_and_mask_round_trip() -> None:
    assert cm.names(cm.mask(["NET_ADMIN", "CHOWN"])) == ["CHOWN", "NET_ADMIN"]
    assert cm.names(1 << 50) == ["CAP_50"]


def test_risky_reports_privileged_net_admin_and_spoof() -> None:
    assert cm.risky(cm.Privileges()) == []
    assert "--privileged" in cm.risky(cm.Privileges(privileged=True))[0]
    assert cm.risky(cm.parse_privileges(cap_add=["NET_ADMIN", "KILL"])) == ["--cap-add NET_ADMIN"]
    assert any("--allow-spoof" in r for r in cm.risky(cm.Privileges(allow_spoof=True)))


def test_spec_stores_privileges_and_reads_old_specs() -> None:
    p = cm.parse_privileges(cap_add=["NET_ADMIN"], user="7:8", allow_spoof=True)
    spec = parse_sandbox_spec(["sleep", "1"], privileges=p)
    again = SandboxSpec.from_json(spec.to_json())
    assert again.privileges == p and again == spec
    old = spec.to_json()
    del old["privileges"]
    assert SandboxSpec.from_json(old).privileges == cm.Privileges()


def test_allow_spoof_needs_a_bridge_network() -> None:
    p = cm.Privileges(allow_spoof=True)
    for net in ("host", "none"):
        with pytest.raises(BadInput, match="--allow-spoof applies only to a bridge network"):
            parse_sandbox_spec(["true"], network=net, privileges=p)
    assert parse_sandbox_spec(["true"], network="n1", privileges=p).privileges.allow_spoof
