"""Help and completion (issue 17): every flag and positional argument has help text; the bash
script completes every command, subcommand, flag and choice the parser has (driven as bash
drives it: COMP_WORDS/COMP_CWORD, then COMPREPLY), and zsh completes through the same logic,
typed at an interactive zsh through a pseudo-terminal (zsh/zpty) as a person types Tab."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from portwright.cli import build_parser
from portwright.completion import script, walk


def _missing_help(parser: argparse.ArgumentParser, path: str = "") -> list[str]:
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            helped = {c.dest for c in a._choices_actions if c.help}
            for name, sub in a.choices.items():
                if name not in helped:
                    out.append(f"{path} {name} (command)".strip())
                out += _missing_help(sub, f"{path} {name}".strip())
        elif not a.help and not isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            out.append(f"{path} {'/'.join(a.option_strings) or a.dest}")
    return out


def test_every_flag_and_argument_has_help() -> None:
    assert _missing_help(build_parser()) == []


def _bash_complete(bash_script: Path, *words: str) -> list[str]:
    """COMPREPLY for the words typed so far (the last one is being completed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    prog = f"""source {bash_script}
COMP_WORDS=({quoted}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMPREPLY=()
__portwright; printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    p = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.splitlines() if w]


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "portwright.bash"
    path.write_text(script("bash", build_parser()))
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    return path


def test_bash_completes_every_command_and_flag(bash_script: Path) -> None:
    for node in walk(build_parser()):
        words = ["portwright", *node.path.split()]
        if node.subs:
            assert sorted(_bash_complete(bash_script, *words, "")) == sorted(node.subs), node.path
        assert sorted(_bash_complete(bash_script, *words, "-")) == sorted(node.flags), node.path
        for flag, choices in node.choices.items():
            assert sorted(_bash_complete(bash_script, *words, flag, "")) == sorted(choices), (node.path, flag)


def test_bash_completion_as_typed(bash_script: Path) -> None:
    assert _bash_complete(bash_script, "portwright", "ps", "--fil") == ["--filter"]
    assert _bash_complete(bash_script, "portwright", "net") == ["network"]
    assert _bash_complete(bash_script, "portwright", "network", "create", "--sub") == [
        "--subnet",
        "--subnet6",
    ]
    # a flag's value is not taken for a command word; --network offers host and none
    assert _bash_complete(bash_script, "portwright", "run", "--name", "x", "-d", "--publish-mode", "pr") == [
        "proxy"
    ]
    assert {"host", "none"} <= set(_bash_complete(bash_script, "portwright", "run", "--network", ""))
    assert _bash_complete(bash_script, "portwright", "run", "-d", "--", "ls", "-") == []  # CMD's words


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completes_at_an_interactive_prompt(tmp_path: Path) -> None:
    fpath = tmp_path / "functions"
    fpath.mkdir()
    (fpath / "_portwright").write_text(script("zsh", build_parser()))
    assert subprocess.run(["zsh", "-n", str(fpath / "_portwright")]).returncode == 0
    # an interactive zsh in a pseudo-terminal: type "portwright ps --fil", Tab, then a marker
    driver = f"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z 'PS1="> "; fpath=({fpath} $fpath); autoload -U compinit; compinit -u -D'
sleep 1
zpty -n -w z $'portwright ps --fil\\t'
sleep 2
zpty -n -w z $'MARK\\n'
zpty -r z out '*MARK*'
print -r -- "$out"
zpty -d z
"""
    p = subprocess.run(["zsh", "-f", "-c", driver], capture_output=True, text=True, timeout=60)
    shown = p.stdout.replace("\x1b[1m", "").replace("\x1b[0m", "")
    assert "portwright ps --filter" in shown, repr(p.stdout[-400:])


def test_completion_command_prints_the_scripts() -> None:
    for shell, marker in (("bash", "complete -F __portwright portwright"), ("zsh", "#compdef portwright")):
        p = subprocess.run(
            [sys.executable, "-m", "portwright", "completion", shell],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert p.returncode == 0 and marker in p.stdout, p.stderr
