"""Docker habits that need root (issue 17): ``rm -f`` kills CMD at once (SIGKILL, no TERM and no
grace period), while ``stop -t`` delivers TERM first, as Docker does. Behaviour only: a CMD that
traps TERM leaves a marker file when it gets one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from proxynet import wait_until
from pwutil import inspect, ps_json, pw, uniq

pytestmark = pytest.mark.integration


@pytest.fixture
def trapping(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A detached sandbox whose CMD writes ``marker`` when it gets SIGTERM (and keeps running);
    (its name, the marker path). Removed whatever the test did."""
    name, marker, ready = uniq("trap"), tmp_path / "got-term", tmp_path / "ready"
    script = f'trap "touch {marker}" TERM; touch {ready}; while :; do sleep 0.1; done'
    pw("run", "-d", "--network", "none", "--name", name, "--", "sh", "-c", script)
    try:
        assert wait_until(ready.exists), "the CMD never set its TERM trap"
        yield name, marker
    finally:
        pw("rm", "-f", name, check=False)


def _listed(name: str) -> bool:
    return any(r["Names"] == name for r in ps_json("-a"))


def test_rm_f_kills_without_term(trapping: tuple[str, Path]) -> None:
    name, marker = trapping
    pw("rm", "-f", name)
    # rm -f returns once CMD is dead, so a TERM it had been sent would have left the marker by now.
    assert not marker.exists(), "rm -f sent SIGTERM (the CMD ran its trap) instead of killing at once"
    assert not _listed(name)
    assert pw("inspect", name, check=False).returncode != 0


def test_stop_delivers_term_before_the_kill(trapping: tuple[str, Path]) -> None:
    name, marker = trapping
    pw("stop", "-t", "1", name)
    assert marker.exists(), "stop -t 1 did not deliver SIGTERM to CMD"
    assert not inspect(name)["State"]["Running"]
