"""Docker habits of the CLI (issue 17): what a Docker user's fingers expect from ``run``,
``exec`` and the error messages. Rootless: handlers are called with the kernel side replaced."""

from __future__ import annotations

import argparse

import pytest

from portwright import cli
from portwright.spec import SandboxSpec, parse_sandbox_spec


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def _run_spec(monkeypatch: pytest.MonkeyPatch, *argv: str) -> SandboxSpec:
    """The spec ``portwright run ARGV`` hands to the supervisor (nothing is started)."""
    from portwright import supervisor

    seen: list[SandboxSpec] = []
    monkeypatch.setattr(supervisor, "check_command", lambda spec: None)
    monkeypatch.setattr(supervisor, "run", lambda spec: seen.append(spec) or 0)
    assert cli.cmd_run(_parse("run", *argv)) == 0
    return seen[0]


# ---------------------------------------------------------------------- 1: -e KEY
def test_bare_env_key_copies_the_hosts_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW_HABIT_FOO", "fromhost")
    monkeypatch.delenv("PW_HABIT_UNSET", raising=False)
    spec = _run_spec(
        monkeypatch, "-e", "PW_HABIT_FOO", "-e", "PW_HABIT_UNSET", "-e", "B=x", "--", "sh", "-c", "true"
    )
    assert spec.env == (("PW_HABIT_FOO", "fromhost"), ("B", "x"))


def test_bare_env_key_in_the_spec_parser_uses_the_given_mapping() -> None:
    spec = parse_sandbox_spec(["x"], env=["A", "B", "C="], host_env={"A": "1"})
    assert spec.env == (("A", "1"), ("C", ""))
    # A stored spec of the first release (no host environment to copy from) reads as it ran.
    assert SandboxSpec.from_json({"cmd": ["x"], "env": ["A"]}).env == (("A", ""),)
