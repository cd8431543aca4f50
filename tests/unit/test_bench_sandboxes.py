"""``bench --sandboxes``: which processes count as kept per sandbox, and the report. Pure: a
synthetic process table stands in for /proc; no root, nothing started."""

from __future__ import annotations

import argparse

import pytest

from portwright.bench import cli, commands, sandboxes
from portwright.bench.sandboxes import Proc
from portwright.errors import BadInput

STATE = "/run/pw-state-x"


def _table() -> dict[int, Proc]:
    rows = [
        (1, 0, "systemd", "/sbin/init"),
        (100, 1, "pw-zygote", f"pw-zygote {STATE}"),
        (101, 100, "portwright", "portwright _supervise a"),
        (102, 100, "portwright", "portwright _supervise b"),
        (201, 101, "sleep", "sleep infinity"),  # sandbox a's command
        (202, 102, "sh", "sh -c x"),  # sandbox b's command and what it started
        (203, 202, "portwright", "portwright exec inside b"),  # the command's own child: not ours
        (150, 101, "pw-relay", "pw-relay helper"),  # something a supervisor runs besides CMD
        (300, 1, "pw-zygote", "pw-zygote /run/pw-state-other"),  # another state dir's fork server
        (301, 300, "portwright", "portwright _supervise other"),
        (400, 1, "pw-helper", f"pw-helper --state {STATE}"),  # a shared helper naming our state
        (401, 1, "pw-helper", f"pw-helper --state {STATE}-2"),  # a prefix is not our state dir
        (500, 1, "containerd", "/usr/bin/containerd --root /var/tmp/pwb-dockerd-1/x"),
        (
            501,
            1,
            "containerd-shim",
            "/usr/bin/containerd-shim-runc-v2 -address /var/tmp/pwb-dockerd-1/c.sock",
        ),
        (502, 1, "containerd-shim", "/usr/bin/containerd-shim-runc-v2 -address /run/containerd/c.sock"),
        (503, 501, "sleep", "sleep 1000000"),
        (600, 1, "dockerd", "/usr/sbin/dockerd --data-root=/var/tmp/pwb-dockerd-1/data"),
        (601, 600, "docker-proxy", "/usr/sbin/docker-proxy -proto tcp"),
        (602, 1, "docker-proxy", "/usr/sbin/docker-proxy -proto tcp"),  # someone else's
    ]
    return {pid: Proc(pid, ppid, comm, cmd) for pid, ppid, comm, cmd in rows}


def test_parse_stat_with_spaces_and_parentheses_in_comm() -> None:
    assert sandboxes.parse_stat("42 (pw (x) y) S 7 42 42 0 -1") == ("pw (x) y", 7)


def test_portwright_keeps_supervisors_their_helpers_the_fork_server_and_state_helpers() -> None:
    kept = sandboxes.portwright_kept(_table(), [101, 102, 999], [201, 202], STATE)
    assert kept == {100, 101, 102, 150, 400}


def test_docker_keeps_its_shims_and_the_proxies_of_our_dockerd() -> None:
    assert sandboxes.docker_kept(_table(), "/var/tmp/pwb-dockerd-1", 600) == {501, 601}


def test_breakdown_groups_by_comm() -> None:
    got = sandboxes.breakdown(_table(), {101: 3000, 102: 2000, 100: 9000})
    assert got == {"portwright": {"count": 2, "pss_kib": 5000}, "pw-zygote": {"count": 1, "pss_kib": 9000}}


def _s(
    system: str,
    variant: str,
    rnd: int,
    each: float | None,
    rm: float | None,
    ok: bool = True,
    procs: dict[str, dict[str, int]] | None = None,
) -> dict[str, object]:
    s = sandboxes._sample(system, variant, rnd, 20)
    s.update(
        ok=ok,
        per_sandbox_kib=each,
        pss_kib=None if each is None else each * 20,
        rm_s=rm,
        start_s=10.0,
        processes=procs or {},
        error=None if ok else "boom",
    )
    return s


def test_summary_takes_medians_of_successful_rounds_and_the_ratio() -> None:
    samples = [
        _s("portwright", "none", r, e, t, procs={"portwright": {"count": 20, "pss_kib": 1}})
        for r, e, t in ((1, 2048, 1.0), (2, 3072, 3.0), (3, 4096, 2.0))
    ]
    samples += [_s("docker", "none", r, e, t) for r, e, t in ((1, 2048, 2.0), (2, 2048, 4.0))]
    samples.append(_s("docker", "none", 3, None, None, ok=False))
    rows = sandboxes.summarize(samples)
    pw, dk, ratio = rows
    assert (pw["per_sandbox_kib"], pw["rm_s"], pw["failed"]) == (3072, 2.0, 0)
    assert (dk["per_sandbox_kib"], dk["rm_s"], dk["failed"], dk["errors"]) == (2048, 3.0, 1, ["boom"])
    assert ratio["ratio"] and ratio["per_sandbox_kib"] == pytest.approx(1.5)
    assert ratio["rm_s"] == pytest.approx(2 / 3)
    assert pw["processes"] == {"portwright": 20}


def test_table_shows_each_variant_and_says_when_docker_was_not_measured() -> None:
    samples = [_s("portwright", "published", 1, 2560, 1.25)]
    result = {
        "n": 20,
        "rounds": 1,
        "samples": samples,
        "summary": sandboxes.summarize(samples),
        "docker_skipped": "/usr/sbin/dockerd not found; install it with: apt-get install docker.io",
    }
    text = sandboxes.table(result)
    assert "published  portwright" in text and "2.50" in text and "1.25" in text
    assert text.splitlines()[-1].startswith("Docker not measured: /usr/sbin/dockerd not found")
    assert "portwright/docker" not in text


def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    commands.register(p.add_subparsers())
    return p.parse_args(["bench", *argv])


def test_sandboxes_option_defaults_to_twenty_and_both_variants() -> None:
    args = _parse("--sandboxes")
    assert cli._sandbox_options(args) == (20, ("none", "published"))
    assert _parse().sandboxes is None
    assert cli._sandbox_options(_parse("--sandboxes", "5", "--sandbox-variants", "none")) == (5, ("none",))


@pytest.mark.parametrize(
    "argv,needle",
    [
        (("--sandboxes", "0"), "--sandboxes 0"),
        (("--sandboxes", "3", "--scale"), "one at a time"),
        (("--sandboxes", "3", "--sandbox-variants", "host"), "unknown variant 'host'"),
    ],
)
def test_sandboxes_bad_input_is_one_line(argv: tuple[str, ...], needle: str) -> None:
    with pytest.raises(BadInput) as e:
        cli._sandbox_options(_parse(*argv))
    assert needle in str(e.value) and "\n" not in str(e.value)
