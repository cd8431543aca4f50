"""The bench and diagnose subcommands are registered by light modules (``bench.commands``,
``diagnose.commands``) that ``portwright.cli`` imports normally: building the parser loads no
bench or diagnose code, the copies of names they show stay equal to their owners, and each
handler reaches the real one."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest

from portwright import cli
from portwright.bench import commands as bench_commands
from portwright.diagnose import commands as diagnose_commands


def test_building_the_parser_loads_no_bench_or_diagnose_code() -> None:
    code = (
        "import sys, portwright.cli as c\n"
        "c.build_parser()\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('portwright.bench.', "
        "'portwright.diagnose.')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["portwright.bench.commands", "portwright.diagnose.commands"]


def test_help_lists_the_plugin_commands() -> None:
    text = cli.build_parser().format_help()
    for name in ("bench", "who", "ports", "audit", "run", "exec"):
        assert f"    {name} " in text, name


def test_the_copied_names_equal_their_owners() -> None:
    from portwright.bench import cli as bench_cli
    from portwright.bench import sandboxes, scale, scenarios
    from portwright.diagnose import audit

    c = bench_commands
    cfg = scenarios.Config()
    assert c.MECHANISMS == scenarios.MECHANISMS and c.DEFAULT_MECHANISMS == scenarios.DEFAULT_MECHANISMS
    assert c.SCENARIOS == tuple(scenarios.SCENARIOS) and c.DEFAULT_SCENARIOS == scenarios.DEFAULT_SCENARIOS
    assert (
        c.DEFAULT_DURATION,
        c.DEFAULT_ROUNDS,
        c.DEFAULT_STREAMS,
        c.DEFAULT_CONNECTIONS,
        c.DEFAULT_THREADS,
    ) == (cfg.duration, cfg.rounds, cfg.streams, cfg.connections, cfg.threads)
    assert (c.SIZES, c.SHAPES, c.ALL_SHAPES) == (scale.SIZES, scale.SHAPES, scale.ALL_SHAPES)
    assert (c.DEFAULT_SANDBOXES, c.SANDBOX_VARIANTS) == (sandboxes.DEFAULT_N, sandboxes.VARIANTS)
    assert c.SCALE_SECONDS == bench_cli.SCALE_SECONDS
    assert diagnose_commands.SEVERITIES == audit.SEVERITIES


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_bench_defaults_are_the_config_defaults() -> None:
    from portwright.bench import cli as bench_cli
    from portwright.bench import scenarios

    cfg = bench_cli.config_from_args(_parse("bench"))
    want = scenarios.Config()
    assert dataclasses.astuple(cfg) == dataclasses.astuple(want)


@pytest.mark.parametrize(
    "argv,target",
    [
        (("bench", "--rounds", "2"), "portwright.bench.cli:handle"),
        (("who", "80"), "portwright.diagnose.cli:cmd_who"),
        (("ports",), "portwright.diagnose.cli:cmd_ports"),
        (("audit", "--fail-on", "medium"), "portwright.diagnose.cli:cmd_audit"),
    ],
)
def test_each_handler_reaches_the_real_one(
    monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...], target: str
) -> None:
    import importlib

    mod, name = target.split(":")
    seen: list[argparse.Namespace] = []

    def fake(args: argparse.Namespace) -> int:
        seen.append(args)
        return 7

    monkeypatch.setattr(importlib.import_module(mod), name, fake)
    args = _parse(*argv)
    assert args.func(args) == 7 and seen == [args]
