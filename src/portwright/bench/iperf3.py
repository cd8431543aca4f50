"""iperf3: the command lines the bench runs and the parser of ``iperf3 -J`` output.

Owns the bulk-throughput scenarios' contract with iperf3 (TCP, and UDP with ``-u``). Throughput is
read from iperf3's own JSON summary (``end.sum_received``: bytes that arrived at the receiver over
the measured seconds; for UDP that leaves out lost datagrams), never estimated. A run that iperf3 reports as an error, or that moved no bytes, is a
failure with iperf3's reason and no number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


def server_command(port: int) -> list[str]:
    """A long-running server; it serves one test at a time, which is how the bench uses it."""
    return ["iperf3", "-s", "-p", str(port)]


#: UDP runs: unthrottled (``-b 0``), datagrams that fit any path's MTU without fragments.
UDP_ARGS = ("-u", "-b", "0", "-l", "1400")


def client_command(
    host: str, port: int, streams: int, seconds: float, reverse: bool, udp: bool = False
) -> list[str]:
    """``iperf3 -c HOST -P N -t T -J`` (+ ``-R`` for the server-to-client direction, + ``UDP_ARGS``
    for UDP). For UDP the result is what arrived (``sum_received``), not what was sent."""
    cmd = ["iperf3", "-c", host, "-p", str(port), "-P", str(streams), "-t", _secs(seconds), "-J"]
    if udp:
        cmd += UDP_ARGS
    if reverse:
        cmd.append("-R")
    return cmd


def _secs(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


@dataclass(frozen=True, slots=True)
class IperfResult:
    """One iperf3 client run. ``error`` set means failed: no number may be printed for it."""

    ok: bool
    error: str | None
    bits_per_second: float | None  # receiver side
    bytes: int | None
    seconds: float | None
    retransmits: int | None
    streams: int
    reverse: bool

    @property
    def gbit_per_second(self) -> float | None:
        return None if self.bits_per_second is None else self.bits_per_second / 1e9

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "error": self.error,
            "bits_per_second": self.bits_per_second,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "retransmits": self.retransmits,
            "streams": self.streams,
            "reverse": self.reverse,
        }


def _failed(why: str, streams: int = 0, reverse: bool = False) -> IperfResult:
    return IperfResult(
        ok=False,
        error=why,
        bits_per_second=None,
        bytes=None,
        seconds=None,
        retransmits=None,
        streams=streams,
        reverse=reverse,
    )


def parse(stdout: str, returncode: int = 0, stderr: str = "") -> IperfResult:
    """Parse ``iperf3 -c ... -J`` output into an IperfResult (never raises on bad output)."""
    try:
        doc = json.loads(stdout)
    except ValueError:
        why = stderr.strip() or stdout.strip() or f"iperf3 exited {returncode} with no output"
        return _failed(f"iperf3 gave no JSON: {why.splitlines()[-1][:200]}")
    if not isinstance(doc, dict):
        return _failed("iperf3 JSON is not an object")
    start = doc.get("start") or {}
    test_start = start.get("test_start") or {}
    streams = int(test_start.get("num_streams") or 0)
    reverse = bool(test_start.get("reverse") or 0)
    if doc.get("error"):
        return _failed(f"iperf3: {doc['error']}", streams, reverse)
    end = doc.get("end") or {}
    recv = end.get("sum_received") or {}
    sent = end.get("sum_sent") or {}
    bps = recv.get("bits_per_second")
    nbytes = recv.get("bytes")
    secs = recv.get("seconds")
    if bps is None or nbytes is None or secs is None:
        return _failed("iperf3 JSON has no end.sum_received summary", streams, reverse)
    if returncode != 0:
        return _failed(f"iperf3 exited with status {returncode}", streams, reverse)
    if nbytes <= 0 or bps <= 0:
        return _failed("iperf3 moved no data", streams, reverse)
    retr = sent.get("retransmits")
    return IperfResult(
        ok=True,
        error=None,
        bits_per_second=float(bps),
        bytes=int(nbytes),
        seconds=float(secs),
        retransmits=None if retr is None else int(retr),
        streams=streams,
        reverse=reverse,
    )
