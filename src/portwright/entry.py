"""The ``portwright`` command's entry point: for a command that will hand a sandbox to the fork
server (``run -d``, ``start``, ``restart``), start that server first, then the CLI.

The CLI spends about a fifth of a second importing itself, and more reading its arguments and
state before it asks the fork server for a sandbox. A server that is not running yet then takes
as long again to start (a Python of its own that imports everything a supervisor runs), and the
request waited for it: a run's first detached sandbox paid both, one after the other. Started
from here, before the CLI imports anything, the server starts while the CLI does (#11). Only the
standard library and ``zygotestart`` are imported before the CLI; a server already running or
starting is left alone (``zygotestart``'s lock), and anything that goes wrong here is left to the
CLI, which starts the server itself when it needs one and reports what fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

#: Where ``State`` keeps its files unless PORTWRIGHT_STATE_DIR says otherwise (state.DEFAULT_DIR).
DEFAULT_STATE_DIR = "/run/portwright"
#: Commands that hand an exited sandbox to the fork server whatever their flags.
RESTARTING = frozenset({"start", "restart"})
#: ``run``'s options that take a value (a unit test checks this against the CLI's parser).
RUN_VALUE_OPTIONS = frozenset(
    {
        "--name",
        "--network",
        "--network-alias",
        "-p",
        "--publish",
        "--expose",
        "-e",
        "--env",
        "--publish-mode",
        "--firewall",
        "--udp-timeout",
        "--proxy-workers",
        "--proxy-connect-timeout",
        "--cap-add",
        "--cap-drop",
        "-u",
        "--user",
    }
)
RUN_DETACH = frozenset({"-d", "--detach"})


def _short_cluster_detaches(word: str) -> tuple[bool, bool]:
    """``-dit``, ``-dp8080:80``: (does it hold -d, does the next word belong to it as a value)."""
    for i, ch in enumerate(word[1:], start=1):
        if f"-{ch}" in RUN_DETACH:
            return True, False
        if f"-{ch}" in RUN_VALUE_OPTIONS:
            return False, i == len(word) - 1  # its value is the rest of the word, or the next one
    return False, False


def runs_detached(words: Sequence[str]) -> bool:
    """Do ``run``'s arguments (after the word ``run``) ask for a detached sandbox? Only the
    options before CMD count: CMD's own ``-d`` is not ours. A form this does not recognise (an
    abbreviated long option) only means no early start."""
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "--" or not word.startswith("-") or word == "-":
            return False  # CMD starts here
        elif word.startswith("--"):
            name = word.split("=", 1)[0]
            if name in RUN_DETACH:
                return True
            skip = name in RUN_VALUE_OPTIONS and "=" not in word
        else:
            detaches, skip = _short_cluster_detaches(word)
            if detaches:
                return True
    return False


def hands_to_fork_server(words: Sequence[str]) -> bool:
    """Will this command line ask the fork server for a sandbox?"""
    if not words:
        return False
    return words[0] in RESTARTING or (words[0] == "run" and runs_detached(words[1:]))


def state_dir() -> str:
    return os.environ.get("PORTWRIGHT_STATE_DIR", DEFAULT_STATE_DIR)


def prestart(words: Sequence[str]) -> bool:
    """Start the fork server now if this command will need it and it is not running; True if
    started. A command the CLI then refuses (bad input) leaves a server with nothing to do, which
    exits on its own after ``zygote.IDLE_SECONDS``."""
    if not hands_to_fork_server(words) or os.geteuid() != 0:
        return False  # not root: the CLI says so in one line
    from .errors import PortwrightError
    from .zygotestart import start_unless_running

    directory = state_dir()
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)  # root-only, as State makes it
        return start_unless_running(directory)
    except (PortwrightError, OSError):
        return False  # the CLI starts it when it needs it, and says what fails


def main() -> int:
    prestart(sys.argv[1:])
    from .cli import main as cli_main

    return cli_main()
