"""Docker habits of the CLI (issue 17): what a Docker user's fingers expect from ``run``,
``exec`` and the error messages. Rootless: handlers are called with the kernel side replaced."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from portwright import cli
from portwright.errors import BadInput, NeedRoot, NotFound, PortwrightError
from portwright.publish.base import Bound, Target, allocate
from portwright.spec import SandboxSpec, parse_expose, parse_publish, parse_sandbox_spec


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


# ---------------------------------------------------------------------- 3: the same host port twice
def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _close(bound: Bound) -> None:
    for _, s in bound:
        if s is not None:
            s.close()


@pytest.mark.parametrize("ip", ["127.0.0.1:", ""])
def test_the_same_host_port_twice_names_both_flags(ip: str) -> None:
    port = _free_tcp_port()
    first, second = f"{ip}{port}:80", f"{ip}{port}:81"
    with pytest.raises(BadInput) as e:
        allocate(
            [parse_publish(first), parse_publish(second)],
            Target(ipaddress.IPv4Address("198.18.0.2"), None),
            [],
            ipv6_host=False,
        )
    msg = str(e.value)
    assert f"-p {first}" in msg and f"-p {second}" in msg and "pid" not in msg, msg
    # All-or-nothing: the first flag's socket was closed too.
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_the_same_port_on_two_addresses_is_no_clash() -> None:
    port = _free_tcp_port()
    bound = allocate(
        [parse_publish(f"127.0.0.1:{port}:80"), parse_publish(f"127.0.0.2:{port}:81")],
        Target(ipaddress.IPv4Address("198.18.0.2"), None),
        [],
        ipv6_host=False,
    )
    try:
        assert [(str(m.host_ip), m.host_port) for m, _ in bound] == [
            ("127.0.0.1", port),
            ("127.0.0.2", port),
        ]
    finally:
        _close(bound)


# ---------------------------------------------------------------------- 4: flags that do not apply
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--proxy-protocol"], "--proxy-protocol applies only to --publish-mode proxy"),
        (["--publish-mode", "nat", "--proxy-protocol"], "--proxy-protocol applies only"),
        (["--udp-timeout", "5"], "--udp-timeout 5 applies only to --publish-mode proxy"),
        (["--udp-timeout", "90"], "--udp-timeout 90 applies only"),  # given, even if the default
        (["--network", "host", "--publish-mode", "proxy"], "--publish-mode proxy does not apply"),
        (["--network", "none", "--publish-mode", "proxy"], "--network none"),
        (["--network", "host", "--proxy-protocol"], "--proxy-protocol applies only"),
    ],
)
def test_flags_that_do_not_apply_are_refused(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], needle: str
) -> None:
    with pytest.raises(BadInput, match=needle.replace("-", r"\-")) as e:
        _run_spec(monkeypatch, *argv, "--", "true")
    assert "\n" not in str(e.value)


def test_flags_that_apply_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _run_spec(
        monkeypatch, "--publish-mode", "proxy", "--proxy-protocol", "--udp-timeout", "5", "--", "true"
    )
    assert (spec.publish_mode, spec.proxy_protocol, spec.udp_timeout) == ("proxy", True, 5.0)
    assert _run_spec(monkeypatch, "--", "true").udp_timeout == 90.0  # not given: the default
    assert _run_spec(monkeypatch, "--network", "host", "--", "true").publish_mode == "nat"


def test_stored_specs_with_ignored_flags_still_read() -> None:
    legacy = {"cmd": ["x"], "publish_mode": "nat", "proxy_protocol": True, "udp_timeout": 5.0}
    assert SandboxSpec.from_json(legacy).proxy_protocol is True
    v1 = {**legacy, "version": 1, "network": "host", "publish_mode": "proxy"}
    assert SandboxSpec.from_json(v1).udp_timeout == 5.0


# ---------------------------------------------------------------------- 5: exec sees -e
def test_exec_gives_cmd_the_sandboxs_env_on_top_of_the_callers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from portwright.kernel import runner

    spec = parse_sandbox_spec(["sleep", "9"], env=["PW_HABIT_A=fromsandbox", "PW_HABIT_B=b"])
    rec = SimpleNamespace(status="running", name="web", sandbox=SimpleNamespace(netns=None), spec=spec)
    monkeypatch.setattr(cli, "State", lambda: SimpleNamespace(sandbox=lambda name: rec))
    monkeypatch.setenv("PW_HABIT_A", "fromcaller")
    monkeypatch.setenv("PW_HABIT_C", "caller")
    out = tmp_path / "env"
    real_call = runner.call
    # The sandbox has no namespace here (netns None): CMD runs for real, in ours.
    monkeypatch.setattr(runner, "call", lambda cmd, **kw: real_call(cmd, **{**kw, "netns_path": None}))
    script = f'echo "$PW_HABIT_A $PW_HABIT_B $PW_HABIT_C" > {out}'
    assert cli.cmd_exec(_parse("exec", "web", "--", "sh", "-c", script)) == 0
    assert out.read_text().split() == ["fromsandbox", "b", "caller"]


# ---------------------------------------------------------------------- 6: error messages
@pytest.mark.parametrize("text", ["80-70", "x", "0", "80/bogus", "70000-70001/udp"])
def test_expose_errors_name_the_expose_flag(text: str) -> None:
    with pytest.raises(BadInput) as e:
        parse_expose(text)
    assert str(e.value).startswith(f"--expose {text}: "), str(e.value)


@pytest.mark.parametrize(
    ("argv", "helped"),
    [
        (["ps", "--bogus"], "portwright ps"),
        (["network", "ls", "--bogus"], "portwright network ls"),
        (["rm", "-f", "x", "--bogus"], "portwright rm"),
        (["--bogus"], "portwright"),
    ],
)
def test_unrecognized_arguments_point_to_the_subcommands_help(
    capsys: pytest.CaptureFixture[str], argv: list[str], helped: str
) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "unrecognized arguments: --bogus" in err and err.rstrip().endswith(f"see '{helped} --help'"), err


def test_the_hidden_zygote_command_is_in_no_choice_list_or_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["bogus"])
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err and "'run'" in err and "_zygote" not in err, err
    assert "_zygote" not in cli.build_parser().format_help()


def test_the_zygote_entry_still_reaches_the_fork_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from portwright import zygote

    seen: list[list[str]] = []
    monkeypatch.setattr(zygote, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["_zygote", "/run/some-state"]) == 0 and seen == [["/run/some-state"]]


def _stat_refusing(monkeypatch: pytest.MonkeyPatch, refused_path: str, exc: OSError) -> None:
    real = os.stat

    def fake(path: Any, *a: Any, **kw: Any) -> Any:
        if str(path) == refused_path:
            raise exc
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "stat", fake)


@pytest.mark.parametrize("euid", [0, 1000])
def test_exec_pid_unreadable_namespace_tells_root_no_sudo(monkeypatch: pytest.MonkeyPatch, euid: int) -> None:
    from portwright.diagnose import nsenter

    _stat_refusing(monkeypatch, "/proc/1/ns/net", PermissionError(13, "Permission denied"))
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    with pytest.raises(PortwrightError) as e:
        nsenter.netns_path_for(pid=1)
    msg = str(e.value)
    assert "pid 1" in msg and "\n" not in msg
    if euid == 0:
        assert "sudo" not in msg and "needs root" not in msg and "permission denied to root" in msg, msg
    else:
        assert isinstance(e.value, NeedRoot), msg


def test_exec_pid_that_exits_meanwhile_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from portwright.diagnose import nsenter

    _stat_refusing(monkeypatch, "/proc/1/ns/net", FileNotFoundError(2, "No such file or directory"))
    with pytest.raises(NotFound, match="pid 1 exited"):
        nsenter.netns_path_for(pid=1)


def test_entering_a_refused_namespace_as_root_says_what_is_wrong(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from portwright.kernel import netns

    def deny(*a: Any, **kw: Any) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(PortwrightError) as e:
        netns.setns(str(tmp_path / "ns"))
    assert "sudo" not in str(e.value) and "permission denied to root" in str(e.value)
