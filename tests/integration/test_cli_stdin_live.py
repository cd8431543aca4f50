"""``-i`` as Docker has it (issue 17): a foreground ``run`` or an ``exec`` without ``-i`` does not
attach stdin (CMD reads /dev/null, so ``echo hi | portwright run -- cat`` prints nothing and
returns at once); with ``-i`` CMD reads what is piped in."""

from __future__ import annotations

import subprocess
import sys

import pytest
from proxynet import wait_until
from pwutil import inspect, pw, uniq

pytestmark = pytest.mark.integration


def _piped(*args: str) -> subprocess.CompletedProcess[str]:
    """``echo hi | portwright ARGS`` as a shell script writes it."""
    return subprocess.run(
        [sys.executable, "-m", "portwright", *args], input="hi\n", capture_output=True, text=True, timeout=60
    )


def test_run_attaches_stdin_only_with_i() -> None:
    without = _piped("run", "--network", "none", "--", "cat")
    assert without.returncode == 0 and without.stdout == ""
    with_i = _piped("run", "-i", "--network", "none", "--", "cat")
    assert with_i.returncode == 0 and with_i.stdout == "hi\n"


def test_exec_attaches_stdin_only_with_i() -> None:
    name = uniq("in")
    pw("run", "-d", "--name", name, "--network", "none", "--", "sleep", "60")
    try:
        assert wait_until(lambda: inspect(name)["State"]["Running"])
        without = _piped("exec", name, "--", "cat")
        assert without.returncode == 0 and without.stdout == ""
        with_i = _piped("exec", "-i", name, "--", "cat")
        assert with_i.returncode == 0 and with_i.stdout == "hi\n"
    finally:
        pw("rm", "-f", name, check=False)
