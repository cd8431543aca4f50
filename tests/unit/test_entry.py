"""The entry point's early start of the fork server (#11): which command lines hand a sandbox to
it (``run``'s own options only, never CMD's), the option table against the CLI's real parser, and
that it starts nothing for anything else, for a user who is not root, or before portwright's
first run made its state directory."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from portwright import entry, state
from portwright.cli import build_parser


def _run_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def test_the_value_options_are_exactly_runs() -> None:
    taking = {
        opt for a in _run_parser()._actions if a.option_strings and a.nargs != 0 for opt in a.option_strings
    }
    assert taking == entry.RUN_VALUE_OPTIONS
    detach = next(a for a in _run_parser()._actions if a.dest == "detach")
    assert set(detach.option_strings) == entry.RUN_DETACH


@pytest.mark.parametrize(
    "words",
    [
        ["-d", "sleep", "1"],
        ["--detach", "sleep", "1"],
        ["--name", "web", "-d", "sleep", "1"],
        ["-p", "8080:80", "-d", "--", "sleep", "1"],
        ["-it", "-d", "sh"],
        ["-dit", "sh"],
        ["-itd", "sh"],
        ["-e", "X=-d", "--detach", "sh"],
        ["--env=A=B", "-d", "sh"],
        ["-p8080:80", "-d", "sh"],
        ["--network", "n1", "--rm", "-d", "sh"],
    ],
)
def test_detached_runs(words: list[str]) -> None:
    assert entry.runs_detached(words)
    assert entry.hands_to_fork_server(["run", *words])


@pytest.mark.parametrize(
    "words",
    [
        ["sleep", "1"],
        ["--name", "-d", "sh"],  # a name that looks like the flag
        ["-e", "-d", "sh"],  # a value that looks like the flag
        ["-p", "80", "date", "-d", "tomorrow"],  # CMD's own -d
        ["--", "date", "-d", "now"],
        ["-it", "sh", "-d"],
        ["-pd", "sh"],  # -p's value is "d"
        [],
    ],
)
def test_foreground_runs(words: list[str]) -> None:
    assert not entry.runs_detached(words)
    assert not entry.hands_to_fork_server(["run", *words])


def test_which_commands_hand_a_sandbox_over() -> None:
    assert entry.hands_to_fork_server(["start", "web"])
    assert entry.hands_to_fork_server(["restart", "-t", "1", "web"])
    for words in (["ps", "-a"], ["rm", "-f", "web"], ["stop", "web"], ["_zygote", "/x"], []):
        assert not entry.hands_to_fork_server(words)


def test_the_state_directory_is_states(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PORTWRIGHT_STATE_DIR", raising=False)
    assert entry.state_dir() == state.state_dir() == state.DEFAULT_DIR == entry.DEFAULT_STATE_DIR
    monkeypatch.setenv("PORTWRIGHT_STATE_DIR", str(tmp_path))
    assert entry.state_dir() == state.state_dir() == str(tmp_path)


def _no_start(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    started: list[str] = []
    monkeypatch.setattr("portwright.zygotestart.start_unless_running", lambda d: started.append(d) or True)
    return started


def test_prestart_starts_only_when_it_should(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    started = _no_start(monkeypatch)
    monkeypatch.setenv("PORTWRIGHT_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(entry.os, "geteuid", lambda: 0)
    assert not entry.prestart(["run", "sh"])  # a foreground run needs no fork server
    assert not entry.prestart(["ps"])
    assert entry.prestart(["run", "-d", "sh"]) and started == [str(tmp_path)]
    fresh = tmp_path / "first-use"  # a first run: the state directory is made root-only
    monkeypatch.setenv("PORTWRIGHT_STATE_DIR", str(fresh))
    assert entry.prestart(["restart", "web"]) and started[-1] == str(fresh)
    assert fresh.stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv("PORTWRIGHT_STATE_DIR", str(tmp_path))
    started.pop()
    monkeypatch.setattr(entry.os, "geteuid", lambda: 1000)
    assert not entry.prestart(["run", "-d", "sh"])  # the CLI says it needs root
    assert started == [str(tmp_path)]


def test_a_failed_prestart_is_left_to_the_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fail(directory: str) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("portwright.zygotestart.start_unless_running", fail)
    monkeypatch.setenv("PORTWRIGHT_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(entry.os, "geteuid", lambda: 0)
    (tmp_path / "ctl").mkdir()
    assert entry.prestart(["start", "web"]) is False
