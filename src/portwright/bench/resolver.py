"""``portwright bench --dns``: what one resolver costs and sustains, measured from inside sandboxes.

Owns the experiment. It runs a private portwright (its own state directory, hosts file and an
empty upstream list, so nothing leaves the machine), puts N idle sandboxes (default 200) on one
network, then, for ``rounds`` rounds:

- latency: one client inside the first sandbox asks 10,000 A queries one after another (names
  drawn from the N sandboxes), and times each from send to answer (``perf_counter_ns``); and the
  same client against a UDP echo on the same gateway address (``--`` the floor: the path without
  DNS work), interleaved, so the ratio says what resolving adds;
- throughput: ``clients`` processes in as many sandboxes keep ``window`` queries each in flight for
  ``duration`` seconds; answered queries per second, and the resolver's CPU seconds over the same
  time (from /proc/PID/stat), so the figure can be read per CPU-second on a shared machine;
- the resolver's own view of each phase (``stats`` on its control socket, ``dns/stats.py``): its
  service time per query (datagram read to answer sent), collector passes and their longest
  pause, table rebuilds. A client p99 far above the service p99 is time spent outside our code
  (waiting to be scheduled on a busy host, the path), not in it.

Clients are Python (dnspython builds the queries; a reply is checked by ID and rcode), run with
``ip netns exec``. Everything it created is removed at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import NeedRoot, PortwrightError
from . import driver

DEFAULT_QUERIES = 10_000
DEFAULT_SANDBOXES = 200
ROUNDS = 3
CLIENTS = 4
WINDOW = 16
DURATION = 5.0
BUILD_WORKERS = 6  # run -d in parallel while building the network
ECHO_PORT = 5353  # the floor: a UDP echo on the gateway address, same client, same path

LATENCY_CLIENT = r"""
import json, random, socket, sys, time
import dns.message
gw, port, names, n = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), int(sys.argv[4])
rng = random.Random(1)
wires = [dns.message.make_query(rng.choice(names), "A").to_wire() for _ in range(256)]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((gw, port))
s.settimeout(2)
lat, lost, bad = [], 0, 0
for i in range(n):
    w = wires[i % len(wires)]
    t0 = time.perf_counter_ns()
    s.send(w)
    try:
        r = s.recv(4096)
    except socket.timeout:
        lost += 1
        continue
    lat.append(time.perf_counter_ns() - t0)
    if r[:2] != w[:2] or (port == 53 and (r[3] & 0x0F or r[7] == 0)):
        bad += 1
print(json.dumps({"lat_ns": lat, "lost": lost, "bad": bad}))
"""

QPS_CLIENT = r"""
import json, random, socket, sys, time, selectors
import dns.message
gw, names, duration, window = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3]), int(sys.argv[4])
rng = random.Random()
wires = {}
for qid in range(window * 4):
    q = dns.message.make_query(rng.choice(names), "A"); q.id = qid; wires[qid] = q.to_wire()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((gw, 53)); s.setblocking(False)
free = list(wires); inflight = {}
ok = bad = lost = 0
end = time.monotonic() + duration
def send():
    qid = free.pop(); inflight[qid] = time.monotonic(); s.send(wires[qid])
for _ in range(window):
    send()
sel = selectors.DefaultSelector(); sel.register(s, selectors.EVENT_READ)
while time.monotonic() < end:
    if sel.select(0.2):
        while True:
            try:
                r = s.recv(4096)
            except BlockingIOError:
                break
            qid = int.from_bytes(r[:2], "big")
            if inflight.pop(qid, None) is None:
                continue
            if r[3] & 0x0F or r[7] == 0: bad += 1
            else: ok += 1
            free.append(qid); send()
    now = time.monotonic()
    for qid, t in list(inflight.items()):
        if now - t > 1.0:
            del inflight[qid]; lost += 1; free.append(qid); send()
print(json.dumps({"ok": ok, "bad": bad, "lost": lost, "seconds": duration}))
"""

ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 15, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    d, a = s.recvfrom(4096)
    s.sendto(d, a)
"""


def percentiles(lat_ns: list[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max in milliseconds (nearest rank)."""
    if not lat_ns:
        return {}
    xs = sorted(lat_ns)

    def p(q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] / 1e6

    return {"p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "p999": p(0.999), "max": xs[-1] / 1e6}


def run_cost_text(seconds: list[float]) -> str:
    """The k-th run -d against the first ones (pure): does creating a sandbox slow down as the
    network fills? Medians of the first and the last tenth (at least one run each)."""
    if not seconds:
        return "no runs"
    tenth = max(1, len(seconds) // 10)
    first, last = statistics.median(seconds[:tenth]), statistics.median(seconds[-tenth:])
    return (
        f"run -d took {first:.2f} s (median of the first {tenth}) and {last:.2f} s "
        f"(median of the last {tenth}), {BUILD_WORKERS} at a time"
    )


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _in_ns(name: str, code: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    done = driver.run(
        ["ip", "netns", "exec", f"pw-{name}", sys.executable, "-c", code, *args], timeout=timeout
    )
    if not done.ok:
        raise PortwrightError(f"bench --dns: client in {name}: {done.why()}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


class Lab:
    """The private portwright: state, network, sandboxes; ``close`` removes all of it."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.root = tempfile.mkdtemp(prefix="pw-bench-dns-")
        self.state = os.path.join(self.root, "state")
        self.saved = {k: os.environ.get(k) for k in _ENV_KEYS}
        os.environ.update(
            PORTWRIGHT_STATE_DIR=self.state,
            PORTWRIGHT_HOSTS_FILE=os.path.join(self.root, "hosts"),
            PORTWRIGHT_UPSTREAM_RESOLV_CONF=os.path.join(self.root, "no-upstreams"),
        )
        self.pw = driver.Portwright()
        self.network = "bdns" + secrets.token_hex(2)
        self.names: list[str] = []
        self.run_seconds: list[float] = []  # each run -d, in the order they finished
        self.echo: driver.Child | None = None

    def build(self, n: int) -> str:
        self.pw.call("network", "create", self.network)
        names = [f"q{i:03d}{secrets.token_hex(2)}" for i in range(n)]

        def start(name: str) -> None:
            t = time.monotonic()
            self.pw.run(name, self.network, ["sleep", "infinity"], timeout=300)
            self.names.append(name)  # in the order they came up: the k-th is names[k - 1]
            self.run_seconds.append(time.monotonic() - t)
            if len(self.names) % 20 == 0:
                self.log(f"{len(self.names)} sandboxes up; that run -d took {self.run_seconds[-1]:.1f} s")

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=BUILD_WORKERS) as pool:
            list(pool.map(start, names))
        self.log(f"{n} sandboxes up in {time.monotonic() - t0:.0f} s; {run_cost_text(self.run_seconds)}")
        doc = json.loads(self.pw.call("network", "inspect", self.network))[0]
        gw = str(doc["IPAM"]["Config"][0]["Gateway"])
        self.echo = driver.spawn([sys.executable, "-c", ECHO, gw, str(ECHO_PORT)])
        return gw

    def close(self) -> list[str]:
        errors: list[str] = []
        if self.echo is not None:
            self.echo.stop()
        for args in (("rm", "-f", *self.names), ("network", "rm", self.network)):
            try:
                if args[-1] != "-f":
                    self.pw.call(*args, timeout=600)
            except PortwrightError as e:
                errors.append(str(e))
        from ..dns.service import LiveDns
        from ..zygote import stop_server

        stop_server(self.state)
        LiveDns(self.state).stop()
        driver.wait_until(lambda: LiveDns(self.state).pid() is None, 10)
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(self.root, ignore_errors=True)
        return errors


_ENV_KEYS = ("PORTWRIGHT_STATE_DIR", "PORTWRIGHT_HOSTS_FILE", "PORTWRIGHT_UPSTREAM_RESOLV_CONF")


def _round(lab: Lab, gw: str, queries: int, log: Callable[[str], None]) -> dict[str, Any]:
    from ..dns.service import LiveDns

    names = ",".join(lab.names)
    out: dict[str, Any] = {}
    dns = LiveDns(lab.state)
    for label, port in (("dns", 53), ("echo", ECHO_PORT)):
        dns.stats(reset=True)
        r = _in_ns(lab.names[0], LATENCY_CLIENT, gw, str(port), names, str(queries))
        out[label] = {
            **percentiles(r["lat_ns"]),
            "answered": len(r["lat_ns"]),
            "lost": r["lost"],
            "bad": r["bad"],
        }
        log(f"latency {label}: p50 {out[label]['p50']:.3f} ms p99 {out[label]['p99']:.3f} ms")
        if label == "dns":
            out["server"] = dns.stats()
            log(f"resolver's own view: {json.dumps(out['server'])}")
    pid = LiveDns(lab.state).pid()
    assert pid is not None
    cpu0, t0 = _cpu_seconds(pid), time.monotonic()
    clients = lab.names[1 : 1 + CLIENTS]
    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        results = list(
            pool.map(lambda n: _in_ns(n, QPS_CLIENT, gw, names, str(DURATION), str(WINDOW)), clients)
        )
    cpu, wall = _cpu_seconds(pid) - cpu0, time.monotonic() - t0
    out["qps_server"] = dns.stats()
    ok = sum(r["ok"] for r in results)
    out["qps"] = {
        "answered_per_s": ok / DURATION,
        "lost": sum(r["lost"] for r in results),
        "bad": sum(r["bad"] for r in results),
        "resolver_cpu_s": cpu,
        "wall_s": wall,
        "per_cpu_s": ok / cpu if cpu else 0.0,
    }
    log(f"throughput: {out['qps']['answered_per_s']:.0f} q/s, resolver CPU {cpu:.2f} s")
    return out


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds (pure)."""

    def med(path: tuple[str, str]) -> float:
        return float(statistics.median(r[path[0]][path[1]] for r in rounds))

    s = {f"{k}_{p}": med((k, p)) for k in ("dns", "echo") for p in ("p50", "p99", "p999", "max")}
    s["dns_over_echo_p50"] = s["dns_p50"] / s["echo_p50"] if s["echo_p50"] else 0.0
    for p in ("answered_per_s", "per_cpu_s", "resolver_cpu_s"):
        s[f"qps_{p}"] = med(("qps", p))
    for p in ("p50", "p99", "p999"):
        s[f"server_{p}_us"] = float(statistics.median(r["server"]["service_us"][p] for r in rounds))
    s["server_gc_ms_max"] = max(r["server"]["gc_ms_max"] for r in rounds)
    s["server_gc_passes"] = sum(sum(r["server"]["gc_passes"]) for r in rounds)
    s["server_rebuilds"] = sum(r["server"]["rebuilds"] for r in rounds)
    s["lost"] = sum(r[k]["lost"] for r in rounds for k in ("dns", "qps"))
    s["bad"] = sum(r[k]["bad"] for r in rounds for k in ("dns", "qps"))
    return s


def text(s: dict[str, Any], n: int, queries: int, rounds: int) -> str:
    return "\n".join(
        [
            f"dns: {n} sandboxes on one network, {queries} sequential queries per round, {rounds} rounds (medians)",
            f"  latency from a sandbox  p50 {s['dns_p50']:.3f} ms  p99 {s['dns_p99']:.3f} ms  "
            f"p99.9 {s['dns_p999']:.3f} ms  max {s['dns_max']:.2f} ms",
            f"  UDP echo, same path     p50 {s['echo_p50']:.3f} ms  p99 {s['echo_p99']:.3f} ms  "
            f"(dns/echo p50 {s['dns_over_echo_p50']:.2f}x)",
            f"  the resolver's own service time  p50 {s['server_p50_us']:.0f} us  "
            f"p99 {s['server_p99_us']:.0f} us  p99.9 {s['server_p999_us']:.0f} us; "
            f"{s['server_gc_passes']} collector passes (longest {s['server_gc_ms_max']:.2f} ms), "
            f"{s['server_rebuilds']} rebuilds, during the latency runs",
            f"  throughput ({CLIENTS} clients x {WINDOW} in flight, {DURATION:g} s)  "
            f"{s['qps_answered_per_s']:.0f} answers/s; {s['qps_per_cpu_s']:.0f} per resolver CPU-second "
            f"(resolver CPU {s['qps_resolver_cpu_s']:.2f} s)",
            f"  lost {s['lost']}, wrong {s['bad']}",
        ]
    )


def handle(args: Any) -> int:
    if os.geteuid() != 0:
        raise NeedRoot("portwright bench --dns (namespaces)")
    n, queries, rounds = args.dns_sandboxes, args.dns_queries, max(1, args.rounds)

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"bench: {msg}", file=sys.stderr, flush=True)

    lab = Lab(log)
    try:
        gw = lab.build(n)
        results = [_round(lab, gw, queries, log) for _ in range(rounds)]
    finally:
        log("cleaning up")
        for e in lab.close():
            print(f"bench: cleanup: {e}", file=sys.stderr)
    s = summary(results)
    print(text(s, n, queries, rounds))
    print(f"  building: {run_cost_text(lab.run_seconds)}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rounds": results, "summary": s, "run_seconds": lab.run_seconds}, f, indent=1)
    return 0
