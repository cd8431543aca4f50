"""Site defaults for ``run``'s flags, from one TOML file (issue 16: ``--firewall``'s default).

The file is the first that exists of: ``$PORTWRIGHT_CONFIG``, ``<state dir>/config.toml`` (the
directory ``PORTWRIGHT_STATE_DIR`` names; a test's or a second instance's private default) and
``/etc/portwright/config.toml``. It holds a ``[run]`` table::

    [run]
    firewall = "host"     # or "forward" (the built-in default)

A flag on the command line always wins. A file that does not parse, or a value that is not one of
the flag's choices, is refused in one line naming the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

from .errors import BadInput
from .spec import FIREWALL_MODES

CONFIG_ENV = "PORTWRIGHT_CONFIG"
STATE_DIR_ENV = "PORTWRIGHT_STATE_DIR"
SYSTEM_CONFIG = "/etc/portwright/config.toml"
DEFAULT_FIREWALL = "forward"


def config_path(env: dict[str, str] | None = None) -> str | None:
    """The configuration file in effect, or None when there is none."""
    env = dict(os.environ) if env is None else env
    if env.get(CONFIG_ENV):
        return env[CONFIG_ENV]
    candidates = [os.path.join(env[STATE_DIR_ENV], "config.toml")] if env.get(STATE_DIR_ENV) else []
    candidates.append(SYSTEM_CONFIG)
    return next((p for p in candidates if os.path.isfile(p)), None)


def parse(text: str, path: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{path}: not valid TOML ({e}); fix or remove the file") from None


def run_default(data: dict[str, Any], key: str, choices: tuple[str, ...], default: str, path: str) -> str:
    """``[run] key`` of a parsed file, checked against ``choices``."""
    run = data.get("run", {})
    value = run.get(key, default) if isinstance(run, dict) else default
    if value not in choices:
        raise BadInput(f"{path}: [run] {key} = {value!r} is not one of {', '.join(choices)}")
    return str(value)


def default_firewall(env: dict[str, str] | None = None) -> str:
    """``--firewall``'s default: the configuration file's ``[run] firewall``, else "forward"."""
    path = config_path(env)
    if path is None:
        return DEFAULT_FIREWALL
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise BadInput(
            f"{path}: cannot read it ({e.strerror}); fix its permissions or unset {CONFIG_ENV}"
        ) from None
    return run_default(parse(text, path), "firewall", FIREWALL_MODES, DEFAULT_FIREWALL, path)
