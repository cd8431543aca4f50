"""iperf3 -J parsing against output recorded on this machine (iperf 3.12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portwright.bench import iperf3

DATA = Path(__file__).parent / "data"


def test_ingress_recorded() -> None:
    text = (DATA / "iperf3_p10_ingress.json").read_text()
    doc = json.loads(text)
    r = iperf3.parse(text)
    assert r.ok and r.error is None
    assert r.streams == 10 and r.reverse is False
    assert r.bits_per_second == pytest.approx(doc["end"]["sum_received"]["bits_per_second"])
    assert r.bytes == doc["end"]["sum_received"]["bytes"]
    assert r.retransmits == doc["end"]["sum_sent"]["retransmits"]
    assert r.gbit_per_second == pytest.approx(r.bits_per_second / 1e9)
    assert r.bits_per_second == pytest.approx(r.bytes * 8 / r.seconds, rel=1e-6)


def test_reverse_recorded() -> None:
    r = iperf3.parse((DATA / "iperf3_p10_reverse.json").read_text())
    assert r.ok and r.reverse is True and r.streams == 10
    assert r.bits_per_second and r.bits_per_second > 0


def test_refused_is_a_failure_without_a_number() -> None:
    r = iperf3.parse((DATA / "iperf3_refused.json").read_text(), returncode=1)
    assert not r.ok
    assert r.error is not None and "Connection refused" in r.error
    assert r.bits_per_second is None and r.gbit_per_second is None


def test_garbage_and_nonzero_exit() -> None:
    r = iperf3.parse("iperf3: error - unable to connect\n", returncode=1)
    assert not r.ok and r.error is not None and "unable to connect" in r.error
    good = (DATA / "iperf3_p10_ingress.json").read_text()
    r2 = iperf3.parse(good, returncode=1)
    assert not r2.ok and r2.bits_per_second is None


def test_client_command() -> None:
    assert iperf3.client_command("127.0.0.1", 9000, 10, 60, False) == [
        "iperf3",
        "-c",
        "127.0.0.1",
        "-p",
        "9000",
        "-P",
        "10",
        "-t",
        "60",
        "-J",
    ]
    assert iperf3.client_command("198.18.0.2", 5201, 4, 1.5, True)[-3:] == ["1.5", "-J", "-R"]
