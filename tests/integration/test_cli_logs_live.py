"""``portwright logs`` used as a person and a script use ``docker logs`` (issue 17): the two
streams kept apart (``2>/dev/null`` shows stdout only), ``--tail``, and ``-f`` followed while
the sandbox writes, in lockstep: CMD writes its next line only after the test has seen the last
one through ``logs -f``, so the test cannot pass unless ``-f`` delivers output live."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxynet import wait_until
from pwutil import inspect, pw, temp_network, uniq

from portwright.kernel import logcollect

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def net() -> Iterator[str]:
    with temp_network(prefix="lg") as n:
        yield n


@pytest.fixture(params=["tini", "relay"])
def placement(request: pytest.FixtureRequest, net: str) -> list[str]:
    """The two ways a detached CMD is started: held by tini (no userland relay) or by the Python
    supervisor that also runs a proxy-mode relay."""
    if request.param == "tini":
        return ["--network", "none"]
    return ["--network", net, "--publish-mode", "proxy", "-p", "127.0.0.1::80"]


def _cmd_lines(stderr: str) -> list[str]:
    """CMD's words on a stream, without portwright's own notes (another command's reconcile may
    add a "portwright: ..." line to any command's stderr)."""
    return " ".join(line for line in stderr.splitlines() if not line.startswith("portwright: ")).split()


def _sandbox(placement: list[str], script: str) -> str:
    name = uniq("lg")
    pw("run", "-d", "--name", name, *placement, "--", "sh", "-c", script)
    return name


def test_streams_apart_and_tail(placement: list[str]) -> None:
    name = _sandbox(placement, "for i in 1 2 3 4; do echo out$i; echo err$i >&2; done; sleep 60")
    try:
        assert wait_until(lambda: "out4" in pw("logs", name).stdout)
        both = pw("logs", name)
        assert both.stdout.split() == ["out1", "out2", "out3", "out4"]
        assert _cmd_lines(both.stderr) == ["err1", "err2", "err3", "err4"]
        # `logs NAME 2>/dev/null`, as a shell user types it
        shell = subprocess.run(
            f"{sys.executable} -m portwright logs {name} 2>/dev/null",
            shell=True,
            capture_output=True,
            text=True,
        )
        assert shell.returncode == 0 and shell.stdout.split() == ["out1", "out2", "out3", "out4"]
        # --tail counts the lines of both streams together, as Docker's json-file: the last two
        # CMD wrote are out4 then err4, unless the collector read err3 and out4 in one poll round
        tail = pw("logs", "--tail", "2", name)
        assert (tail.stdout.split(), _cmd_lines(tail.stderr)) in (
            (["out4"], ["err4"]),
            ([], ["err3", "err4"]),
        )
        bad = pw("logs", "--tail", "x", name, check=False)
        errors = [line for line in bad.stderr.splitlines() if "--tail" in line]
        assert bad.returncode == 2 and len(errors) == 1 and "Traceback" not in bad.stderr
    finally:
        pw("rm", "-f", name, check=False)


def test_follow_while_the_sandbox_writes(placement: list[str], tmp_path: Path) -> None:
    lines = 5
    # line i is written once the test has acknowledged line i-1 (file ack<i-1>); then CMD exits
    script = (
        f"i=0; while [ $i -lt {lines} ]; do echo line$i; echo eline$i >&2; "
        f"while [ ! -e {tmp_path}/ack$i ]; do sleep 0.05; done; i=$((i+1)); done"
    )
    name = _sandbox(placement, script)
    follower = subprocess.Popen(
        [sys.executable, "-m", "portwright", "logs", "-f", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert follower.stdout is not None
        for i in range(lines):
            assert follower.stdout.readline() == f"line{i}\n"
            (tmp_path / f"ack{i}").touch()
        follower.wait(timeout=30)  # -f ends by itself once the sandbox has exited
        assert follower.returncode == 0 and follower.stdout.read() == ""
        assert _cmd_lines(pw("logs", name).stderr) == [f"eline{i}" for i in range(lines)]
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
        pw("rm", "-f", name, check=False)


def _ordered_sandbox(placement: list[str], tmp_path: Path, steps: list[tuple[str, str]]) -> str:
    """CMD writes each (stream, word) of ``steps`` only after the test has seen the one before
    in ``logs`` and acknowledged it (file ack<i>): the order between the streams is the test's."""
    parts = []
    for i, (stream, word) in enumerate(steps):
        redirect = " >&2" if stream == "e" else ""
        parts.append(f"echo {word}{redirect}; while [ ! -e {tmp_path}/ack{i} ]; do sleep 0.02; done")
    return _sandbox(placement, "; ".join(parts) + "; sleep 60")


def test_timestamps_order_since_until(placement: list[str], tmp_path: Path) -> None:
    steps = [("o", "first"), ("e", "second"), ("o", "third"), ("e", "fourth")]
    name = _ordered_sandbox(placement, tmp_path, steps)
    try:
        for i, (_, word) in enumerate(steps):
            assert wait_until(lambda w=word: w in pw("logs", name).stdout + pw("logs", name).stderr)
            (tmp_path / f"ack{i}").touch()
        t = pw("logs", "-t", name)
        stamped = [line.split(" ", 1) for line in (t.stdout + t.stderr).splitlines() if " " in line]
        stamped = [(ts, w) for ts, w in stamped if not w.startswith("portwright")]
        words = [w for _, w in sorted(stamped)]  # by time: the order CMD wrote them in
        assert words == [w for _, w in steps]
        times = dict((w, ts) for ts, w in stamped)
        assert all(len(ts) == 30 and ts.endswith("Z") for ts in times.values())  # RFC 3339, ns
        assert [ln.split(" ", 1)[1] for ln in t.stdout.splitlines()] == ["first", "third"]
        since = pw("logs", "--since", times["second"], name)
        assert (since.stdout.split(), _cmd_lines(since.stderr)) == (["third"], ["second", "fourth"])
        until = pw("logs", "--until", times["third"], name)
        assert (until.stdout.split(), _cmd_lines(until.stderr)) == (["first", "third"], ["second"])
        assert pw("logs", "--since", "1h", name).stdout.split() == ["first", "third"]
        assert pw("logs", "--since", "0", "--until", "1", name).stdout == ""  # Unix seconds: 1970
        bad = pw("logs", "--since", "yesterday", name, check=False)
        errors = [line for line in bad.stderr.splitlines() if "--since" in line]
        assert bad.returncode == 2 and len(errors) == 1 and "Traceback" not in bad.stderr
    finally:
        pw("rm", "-f", name, check=False)


def _collectors(records: str) -> list[int]:
    """The live collector processes (reader and spare) writing ``records``."""
    found = []
    for d in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if argv[:2] == [logcollect.NAME.encode(), records.encode()] and state != "Z":
            found.append(int(d))
    return found


def _reader(pair: list[int]) -> int:
    """The reader of a collector pair: the parent of the other (its spare)."""
    for pid in pair:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if ppid in pair:
            return ppid
    raise AssertionError(f"no reader among {pair}")


def test_collector_killed_loses_nothing_and_cmd_goes_on(placement: list[str]) -> None:
    n = 300
    script = (
        f"i=0; while [ $i -lt {n} ]; do echo line$i; echo eline$i >&2; i=$((i+1)); sleep 0.01; done; "
        "echo done; sleep 60"
    )
    name = _sandbox(placement, script)
    try:
        records = logcollect.records_path(inspect(name)["LogPath"])
        assert wait_until(lambda: len(_collectors(records)) == 2)
        for _ in range(2):  # the first kill hits one of the pair, the second one its replacement
            os.kill(_reader(_collectors(records)), signal.SIGKILL)
            assert wait_until(lambda: len(_collectors(records)) == 2)
        assert wait_until(lambda: "done" in pw("logs", name).stdout.split(), timeout=60)
        out = pw("logs", name)
        assert out.stdout.split() == [f"line{i}" for i in range(n)] + ["done"]
        assert _cmd_lines(out.stderr) == [f"eline{i}" for i in range(n)]
        assert inspect(name)["State"]["Running"]  # CMD never got EPIPE
        notes = [line for line in out.stderr.splitlines() if "log collector was killed" in line]
        assert len(notes) == 2  # each reader killed was replaced, and said so
    finally:
        pw("rm", "-f", name, check=False)
