"""wrk: the command lines for the connection-rate and keep-alive scenarios and their parser.

Owns the HTTP scenarios' contract with wrk. wrk runs a small Lua ``done`` hook that prints one
machine-readable line (``PWJSON {...}``) with wrk's own counters and latency percentiles, so the
numbers come from wrk's summary and not from scraping its human text. A run with no summary, no
completed request, or errors on more than ``MAX_ERROR_FRACTION`` of its requests is a failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MARKER = "PWJSON "
# A measurement where more than 1% of requests failed measures the failure, not the path.
MAX_ERROR_FRACTION = 0.01
# A run below this fraction of the rate its connections and mean latency imply is a stall. Short
# connections land near 0.6-0.9 (wrk's latency leaves out connect); a stall lands far below.
STALL_FRACTION = 0.3

LUA_DONE_HOOK = """\
-- portwright bench: print wrk's own summary as one JSON line (latency in microseconds).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('PWJSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.3f,"max":%d,"stdev":%.3f,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"""


def client_command(
    url: str, seconds: float, connections: int, threads: int, close: bool, script: str
) -> list[str]:
    """wrk with the JSON hook; ``close`` adds ``Connection: close`` (one request per connection)."""
    secs = str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{secs}s", "--latency", "-s", script]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(url)
    return cmd


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run. ``error`` set means failed: no number may be printed for it."""

    ok: bool
    error: str | None
    requests: int | None
    duration_s: float | None
    errors: dict[str, int]
    latency_us: dict[str, float]

    @property
    def requests_per_second(self) -> float | None:
        if not self.ok or self.requests is None or not self.duration_s:
            return None
        return self.requests / self.duration_s

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "error": self.error,
            "requests": self.requests,
            "duration_s": self.duration_s,
            "requests_per_second": self.requests_per_second,
            "errors": self.errors,
            "latency_us": self.latency_us,
        }


def _failed(
    why: str,
    requests: int | None = None,
    duration: float | None = None,
    errors: dict[str, int] | None = None,
    latency: dict[str, float] | None = None,
) -> WrkResult:
    return WrkResult(
        ok=False,
        error=why,
        requests=requests,
        duration_s=duration,
        errors=errors or {},
        latency_us=latency or {},
    )


def stall(requests: int, duration_s: float, mean_latency_us: float, connections: int) -> str | None:
    """Why a finished run is a stall, or None. With every connection busy all the time, Little's
    law gives req/s = connections / mean latency; a run far below that spent its time waiting
    (lost SYNs, a full accept queue), not serving, so its rate measures the wait (issue 13)."""
    if mean_latency_us <= 0 or connections <= 0 or duration_s <= 0:
        return None
    got = requests / duration_s
    expected = connections / (mean_latency_us / 1e6)
    if got >= STALL_FRACTION * expected:
        return None
    return (
        f"stalled: {got:,.0f} req/s, but {connections} connections at a mean latency of "
        f"{mean_latency_us / 1000:.2f} ms would make {expected:,.0f}; connections waited instead of "
        "working, so the run is reported, not counted"
    )


def connections_of(cmd: object) -> int | None:
    """wrk's ``-c N`` in a command line (a list of words), None when absent."""
    if isinstance(cmd, list | tuple) and "-c" in cmd:
        i = list(cmd).index("-c")
        if i + 1 < len(cmd) and str(cmd[i + 1]).isdigit():
            return int(cmd[i + 1])
    return None


def parse(stdout: str, returncode: int = 0, stderr: str = "", connections: int | None = None) -> WrkResult:
    """Parse wrk's output (with the hook's PWJSON line) into a WrkResult (never raises). Given
    ``connections``, a stalled run (``stall``) is a failed one, with the reason."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith(MARKER)), None)
    if line is None:
        text = stderr.strip() or stdout.strip() or f"wrk exited {returncode} with no output"
        return _failed(f"wrk gave no summary: {text.splitlines()[-1][:200]}")
    try:
        doc = json.loads(line[len(MARKER) :])
        requests = int(doc["requests"])
        duration = int(doc["duration_us"]) / 1e6
        errors = {k: int(v) for k, v in dict(doc["errors"]).items()}
        latency = {k: float(v) for k, v in dict(doc["latency_us"]).items()}
    except (ValueError, KeyError, TypeError) as e:
        return _failed(f"wrk summary unreadable: {e}")
    if returncode != 0:
        return _failed(f"wrk exited with status {returncode}", requests, duration, errors, latency)
    if requests <= 0 or duration <= 0:
        return _failed("wrk completed no request", requests, duration, errors, latency)
    nerr = sum(errors.values())
    if nerr > MAX_ERROR_FRACTION * requests:
        detail = ", ".join(f"{k} {v}" for k, v in errors.items() if v)
        return _failed(
            f"wrk saw errors on {nerr} of {requests} requests ({detail})", requests, duration, errors, latency
        )
    stalled = stall(requests, duration, latency.get("mean", 0.0), connections) if connections else None
    if stalled:
        return _failed(stalled, requests, duration, errors, latency)
    return WrkResult(
        ok=True, error=None, requests=requests, duration_s=duration, errors=errors, latency_us=latency
    )
