"""The drop-in bench's efficiency columns (bench/proxydropin.py, issue 15): CPU per request and
the scheduler's run-queue share, read from /proc the same way for every proxy. No root."""

from __future__ import annotations

import os

import pytest

from portwright.bench.proxydropin import KEYS, _sched, classify, parse_schedstat, per_request_us, table


def test_parse_schedstat() -> None:
    assert parse_schedstat("123456789 987654321 4242\n") == (123456789, 987654321)
    with pytest.raises(ValueError):
        parse_schedstat("1 2\n")


def test_per_request_us() -> None:
    assert per_request_us(0.9, 1000.0, 3.0) == 300.0  # 0.9 s of CPU for 3,000 requests
    assert per_request_us(0.5, 0.0, 3.0) == 0.0  # nothing ran: no figure, not a division by zero


def test_sched_reads_this_process_and_skips_the_dead() -> None:
    cpu0, run0, _ = _sched([os.getpid()])
    x = 0
    for i in range(300_000):
        x += i
    cpu1, run1, wait1 = _sched([os.getpid(), 2**22 + 7])  # a pid that does not exist is skipped
    assert cpu1 >= cpu0 and run1 > run0 and wait1 >= 0


def test_table_has_the_efficiency_columns() -> None:
    row = {k: 1.0 for k in KEYS} | {"mech": "docker-proxy", "ports": 200}
    text = table([row, row | {"cpu_us_first": 3.0}])
    assert "cpu_us_first" in text and "runq_four" in text and "| docker-proxy | 200 |" in text


NAMES = (b"/tmp/pwb/portwright-proxy-1w/portwright-proxy", b"/tmp/pwb/portwright-proxy-1w/run")


@pytest.mark.parametrize(
    ("argv", "kind"),
    [
        (
            [b"/venv/bin/python", b"-I", b"-m", b"portwright.proxy.shared", b"serve", b"--dir", NAMES[1]],
            "relay",
        ),
        ([NAMES[0], b"-proto", b"tcp", b"-host-port", b"20000"], "proxy"),
        ([b"/usr/sbin/dockerd", b"--userland-proxy-path=" + NAMES[0]], None),  # dockerd is not a proxy
        ([b"/venv/bin/python", b"-m", b"portwright.proxy.shared", b"serve", b"--dir", b"/run/other"], None),
        ([], None),
    ],
)
def test_classify_tells_the_relay_from_the_waiters(argv: list[bytes], kind: str | None) -> None:
    assert classify(argv, NAMES) == kind


def test_classify_counts_docker_proxy_by_its_program_name() -> None:
    assert classify([b"/usr/bin/docker-proxy", b"-proto", b"tcp"], (b"docker-proxy",)) == "proxy"
    assert classify([b"/usr/bin/dockerd"], (b"docker-proxy",)) is None
