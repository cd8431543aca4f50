"""kernel.runner, the one place that starts programs: its error mapping (a missing tool names its
package, a hung one is a KernelError), the ``ip netns exec`` prefix, and what a detached process
gets. Fake tools are small shell scripts on a private PATH, so nothing here needs root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from portwright.errors import KernelError, MissingTool, NeedRoot
from portwright.kernel import runner

ROOT = Path(__file__).resolve().parents[2]


def _tool(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def bindir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory that is the whole PATH: only the fake tools a test puts there exist."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    return d


@pytest.mark.parametrize(
    "tool,package",
    [
        ("nft", "nftables"),
        ("conntrack", "conntrack"),
        ("ip", "iproute2"),
        ("ip6tables", "iptables"),
        ("frobnicate", "frobnicate"),
    ],
)
def test_a_missing_tool_names_its_package(bindir: Path, tool: str, package: str) -> None:
    with pytest.raises(
        MissingTool, match=f"^{tool} is not available; install it with: apt-get install {package}$"
    ):
        runner.run([tool, "--version"])
    assert not runner.available(tool)


def test_a_tool_in_a_namespace_needs_ip_too(bindir: Path) -> None:
    _tool(bindir, "nft", "exit 0")
    with pytest.raises(MissingTool, match="apt-get install iproute2"):
        runner.run(["nft", "list", "ruleset"], netns="pw-x")


def test_netns_runs_the_tool_under_ip_netns_exec(bindir: Path) -> None:
    _tool(bindir, "ip", 'echo "ip $*"')
    _tool(bindir, "nft", "exit 0")
    p = runner.run(["nft", "-j", "list", "ruleset"], netns="pw-x")
    assert p.stdout == "ip netns exec pw-x nft -j list ruleset\n"
    assert p.args == ["ip", "netns", "exec", "pw-x", "nft", "-j", "list", "ruleset"]
    assert runner.run(["nft"], netns=None).args == ["nft"]


def test_a_hung_tool_is_a_kernel_error_naming_the_command(bindir: Path) -> None:
    _tool(bindir, "nft", "exec sleep 30")
    os.symlink(shutil.which("sleep", path="/usr/bin:/bin") or "/bin/sleep", bindir / "sleep")
    with pytest.raises(KernelError, match=r"^nft -j -f - failed: timed out after 0.3s$") as e:
        runner.run(["nft", "-j", "-f", "-"], input="{}", timeout=0.3)
    assert isinstance(e.value.__cause__, subprocess.TimeoutExpired)


def test_input_goes_to_stdin_and_stdin_is_empty_without_it(bindir: Path) -> None:
    _tool(bindir, "tool", 'while read -r line; do echo "got $line"; done; echo done')
    assert runner.run(["tool"], input="a\nb\n").stdout == "got a\ngot b\ndone\n"
    # No input: stdin is /dev/null, so a tool that reads it finishes instead of waiting on ours.
    assert runner.run(["tool"], timeout=10).stdout == "done\n"
    assert runner.run(["tool"], input=b"x\n", text=False).stdout == b"got x\ndone\n"


def test_a_nonzero_exit_is_the_callers_unless_check(bindir: Path) -> None:
    _tool(bindir, "tool", 'echo "no such thing: $1" >&2; exit 3')
    p = runner.run(["tool", "x"])
    assert (p.returncode, p.stderr) == (3, "no such thing: x\n")
    with pytest.raises(KernelError, match=r"^tool x failed: no such thing: x$"):
        runner.run(["tool", "x"], check=True)
    _tool(bindir, "quiet", "exit 4")
    with pytest.raises(KernelError, match=r"^quiet failed: exit 4$"):
        runner.run(["quiet"], check=True)
    _tool(bindir, "ip", 'echo "RTNETLINK answers: Operation not permitted" >&2; exit 2')
    with pytest.raises(NeedRoot, match="^ip link add x type bridge needs root"):
        raise runner.failure(runner.run(["ip", "link", "add", "x", "type", "bridge"]))


def test_a_tool_that_cannot_start_is_a_kernel_error(bindir: Path) -> None:
    (bindir / "broken").write_text("#!/nonexistent/interpreter\n")
    (bindir / "broken").chmod(0o755)
    with pytest.raises(KernelError, match="^broken failed: .*No such file or directory"):
        runner.run(["broken"])


def test_spawn_detached_gets_a_session_a_log_and_only_the_descriptors_passed(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_text("earlier\n")
    keep_r, keep_w = os.pipe()
    other_r, other_w = os.pipe()
    os.set_inheritable(other_r, True)  # close_fds must close it anyway
    probe = (
        "import os, sys\n"
        "print('session', os.getsid(0) == os.getpid())\n"
        "print('stdin', repr(sys.stdin.read()))\n"
        "print('cwd', os.getcwd())\n"
        "print('env', os.environ.get('PW_RUNNER_TEST'))\n"
        f"print('keep', os.read({keep_r}, 10))\n"
        f"try:\n    os.fstat({other_r}); print('other open')\n"
        "except OSError:\n    print('other closed')\n"
        "print('to stderr', file=sys.stderr)\n"
    )
    try:
        os.write(keep_w, b"hello")
        pid = runner.spawn_detached(
            [sys.executable, "-c", probe],
            log_path=str(log),
            cwd=str(tmp_path),
            env={"PW_RUNNER_TEST": "yes", "PATH": os.environ.get("PATH", "")},
            pass_fds=(keep_r,),
        )
        _, status = os.waitpid(pid, 0)
    finally:
        for fd in (keep_r, keep_w, other_r, other_w):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, log.read_text()
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier"  # appended, not truncated
    assert set(lines[1:]) == {
        "session True",
        "stdin ''",
        f"cwd {tmp_path}",
        "env yes",
        "keep b'hello'",
        "other closed",
        "to stderr",
    }


def test_spawn_detached_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingTool, match="^no-such-program-pw is not available"):
        runner.spawn_detached(["no-such-program-pw"], log_path=None)
    bad = tmp_path / "bad"
    bad.write_text("#!/nonexistent/interpreter\n")
    bad.chmod(0o755)
    with pytest.raises(KernelError, match="^starting the test helper failed: .*No such file"):
        runner.spawn_detached([str(bad)], log_path=None, what="starting the test helper")


def test_call_runs_in_the_foreground_and_leaves_a_missing_command_to_the_caller() -> None:
    assert runner.call(["sh", "-c", "exit 3"]) == 3
    with pytest.raises(FileNotFoundError):
        runner.call(["no-such-program-pw"])


def test_ruff_keeps_subprocess_in_the_runner() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed in this environment")
    snippet = '"""x."""\n\nimport subprocess\n\nsubprocess.run(["true"], check=False)\n'

    def lint(path: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ruff), "check", "--no-cache", "--stdin-filename", path, "-"],
            input=snippet,
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )

    banned = lint("src/portwright/engine.py")
    assert banned.returncode == 1 and "TID251" in banned.stdout and "kernel/runner.py" in banned.stdout
    for allowed in (
        "src/portwright/kernel/runner.py",
        "src/portwright/bench/driver.py",
        "tests/unit/test_x.py",
    ):
        assert lint(allowed).returncode == 0, allowed
