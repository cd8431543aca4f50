"""Side-by-side measurement of portwright's proxy against Docker's docker-proxy (not a test).

Run as root: ``python -m portwright.proxy.measure [--seconds 5] [--rounds 3] [--ports 1000]``.
Everything runs in one interleaved session against the same backend namespace (nginx and iperf3
inside it, addresses from 198.19.250.0/23): direct to the backend, docker-proxy
(``/usr/sbin/docker-proxy``) and ``portwright-proxy`` (the drop-in, one process per mapping,
exactly as dockerd would start it). It reports medians and the ratio portwright / docker-proxy:

- iperf3 -P 10, ingress and egress (-R): Gbit/s, busy CPUs from /proc/stat, Gbit/s per busy CPU;
- wrk, 32 connections, with and without keep-alive: requests/s and p99 latency;
- iperf3 -u: delivered Mbit/s (sent rate times one minus the loss);
- PSS for N published TCP ports: one ProxyServer process against N docker-proxy processes.

The bench team can call ``run()`` and use the returned dict.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

DOCKER_PROXY = "/usr/sbin/docker-proxy"
NGINX_CONF = """worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{ listen {port} reuseport backlog=4096; keepalive_requests 1000000;
           location / {{ return 200 "portwright measure\\n"; }} }}
}}
"""


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=120)


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies summed over all CPUs, as mpstat counts them."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return total - idle, total


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


@dataclass
class Peer:
    name: str
    host_port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


@dataclass
class Lab:
    ns: str
    veth: str
    ip4: str
    tmp: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    tag = secrets.token_hex(3)
    ns, veth = f"pwt-pm-{tag}", f"pwtm{tag}"
    third = random.choice([250, 251])
    fourth = random.randrange(0, 256, 8)
    host4, ip4 = f"198.19.{third}.{fourth + 1}", f"198.19.{third}.{fourth + 2}"
    tmp = tempfile.mkdtemp(prefix="pw-measure-")
    lb = Lab(ns, veth, ip4, tmp)
    try:
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _sh("ip", "addr", "add", f"{host4}/29", "dev", veth)
        _sh("ip", "link", "set", veth, "up")
        _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip4}/29", "dev", "eth0")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        with open(os.path.join(tmp, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF.format(d=tmp, port=80))
        # one iperf3 server per peer (5201 direct, 5202 docker-proxy, 5203 portwright): a server
        # still finishing one peer's test never answers "busy" to the next
        for cmd in (["nginx", "-c", os.path.join(tmp, "nginx.conf")], ["iperf3", "-s", "-p", "5201"],
                    ["iperf3", "-s", "-p", "5202"], ["iperf3", "-s", "-p", "5203"]):
            lb.procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *cmd],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)
        yield lb
    finally:
        for p in lb.procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()
        _sh("ip", "link", "del", veth, check=False)
        _sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def start_proxy(binary: list[str], proto: str, host_ip: str, host_port: int, cip: str,
                cport: int) -> subprocess.Popen[bytes]:
    """Start a docker-proxy-contract process and wait for its "0\\n" on fd 3."""
    r, w = os.pipe()
    args = [*binary, "-proto", proto, "-host-ip", host_ip, "-host-port", str(host_port),
            "-container-ip", cip, "-container-port", str(cport)]
    # fd 3 in the child is the write end (dup2 makes it inheritable); w itself is close-on-exec.
    p = subprocess.Popen(args, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         preexec_fn=lambda: os.dup2(w, 3))
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            status = f.read()
    except OSError:
        status = b""
    if not status.startswith(b"0\n"):
        p.kill()
        p.wait()
        raise RuntimeError(f"{binary[0]} failed to start: {status!r}")
    return p


def free_ports(n: int, start: int = 20000) -> list[int]:
    import socket

    out: list[int] = []
    port = start + random.randrange(0, 5000)
    while len(out) < n and port < 65000:
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port))
            out.append(port)
        except OSError:
            pass
        port += 1
    return out


def _iperf(port: int, seconds: float, reverse: bool, udp: bool = False) -> float:
    args = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"]
    args += ["-u", "-b", "0", "-l", "1400"] if udp else ["-P", "10"]
    if reverse:
        args.append("-R")
    return _iperf_retry(args, udp)


def _iperf_retry(args: list[str], udp: bool) -> float:
    """Run iperf3; a server still busy with the previous test gets a few seconds to finish."""
    for _ in range(10):
        try:
            return _iperf_result(_sh(*args, check=False).stdout, udp)
        except RuntimeError as e:
            if "busy" not in str(e):
                raise
            time.sleep(1.0)
    return _iperf_result(_sh(*args, check=False).stdout, udp)


def _iperf_result(stdout: str, udp: bool) -> float:
    """Gbit/s the receiver got (for UDP: what arrived, not what was sent)."""
    out = json.loads(stdout)
    if "error" in out:
        raise RuntimeError(f"iperf3 failed: {out['error']}")
    end = out["end"]
    if udp:
        if "sum_received" in end:
            return float(end["sum_received"]["bits_per_second"]) / 1e9
        s = end["sum"]
        return float(s["bits_per_second"]) * (1 - float(s.get("lost_percent", 0)) / 100) / 1e9
    return float(end["sum_received"]["bits_per_second"]) / 1e9


def _wrk(url: str, seconds: float, keepalive: bool) -> tuple[float, float]:
    """(requests/s, p99 ms) from wrk's text summary against url."""
    args = ["wrk", "-t2", "-c32", f"-d{max(1, int(seconds))}s", "--latency"]
    if not keepalive:
        args += ["-H", "Connection: close"]
    out = _sh(*args, url).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = 0.0
    if m:
        p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return rps, p99


def _measured(fn: Callable[[], float]) -> tuple[float, float]:
    b0, t0 = cpu_times()
    val = fn()
    b1, t1 = cpu_times()
    ncpu = os.cpu_count() or 1
    return val, (b1 - b0) / max(1, t1 - t0) * ncpu


def run(seconds: float = 5, rounds: int = 3, ports: int = 1000,
        say: Callable[[str], None] = print) -> dict[str, object]:
    ours = [sys.executable, "-m", "portwright.proxy.dockerproxy"]
    results: dict[str, dict[str, list[float]]] = {}
    with lab() as lb:
        p = free_ports(2)
        peers = {"direct": Peer("direct", 0), "docker-proxy": Peer("docker-proxy", p[0]),
                 "portwright": Peer("portwright", p[1])}
        try:
            for name, binary, cport in (("docker-proxy", [DOCKER_PROXY], 5202), ("portwright", ours, 5203)):
                pe = peers[name]
                for proto in ("tcp", "udp"):
                    pe.procs.append(start_proxy(binary, proto, "127.0.0.1", pe.host_port, lb.ip4, cport))
            # nginx listens on 80: a second pair of proxies for HTTP
            p2 = free_ports(2, start=30000)
            http = {"direct": 0, "docker-proxy": p2[0], "portwright": p2[1]}
            for name, binary in (("docker-proxy", [DOCKER_PROXY]), ("portwright", ours)):
                peers[name].procs.append(start_proxy(binary, "tcp", "127.0.0.1", http[name], lb.ip4, 80))
            for rnd in range(rounds):
                order = list(peers)
                if rnd % 2:
                    order.reverse()
                for name in order:
                    pe = peers[name]
                    rec = results.setdefault(name, {})
                    for label, rev in (("ingress", False), ("egress", True)):
                        gbps, busy = _measured(lambda pe=pe, rev=rev: _iperf_to(lb, pe, rev))  # type: ignore[misc]
                        rec.setdefault(f"{label}_gbps", []).append(gbps)
                        rec.setdefault(f"{label}_busy_cpus", []).append(busy)
                        rec.setdefault(f"{label}_gbps_per_cpu", []).append(gbps / busy if busy else 0)
                    for label, ka in (("close", False), ("keepalive", True)):
                        rps, p99 = _wrk_to(lb, http[name], name, seconds, ka)
                        rec.setdefault(f"wrk_{label}_rps", []).append(rps)
                        rec.setdefault(f"wrk_{label}_p99_ms", []).append(p99)
                    rec.setdefault("udp_gbps", []).append(_iperf_to(lb, pe, False, udp=True, seconds=seconds))
                    say(f"round {rnd + 1}/{rounds} {name}: " + ", ".join(
                        f"{k}={v[-1]:.2f}" for k, v in rec.items()))
        finally:
            for pe in peers.values():
                for pr in pe.procs:
                    pr.terminate()
                    pr.wait(timeout=10)
        mem = measure_pss(lb.ip4, ports, say)
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    ratios = {k: med["portwright"][k] / med["docker-proxy"][k]
              for k in med["portwright"] if med["docker-proxy"].get(k)}
    return {"seconds": seconds, "rounds": rounds, "raw": results, "median": med,
            "ratio_portwright_vs_docker_proxy": ratios, "memory": mem,
            "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                        "date": time.strftime("%Y-%m-%d")}}


_SECONDS = [5.0]


def _iperf_to(lb: Lab, pe: Peer, rev: bool, udp: bool = False, seconds: float | None = None) -> float:
    t = seconds or _SECONDS[0]
    if pe.name == "direct":
        args = ["iperf3", "-c", lb.ip4, "-p", "5201", "-t", str(t), "-J"]
        args += ["-u", "-b", "0", "-l", "1400"] if udp else ["-P", "10"]
        if rev:
            args.append("-R")
        return _iperf_retry(args, udp)
    return _iperf(pe.host_port, t, rev, udp)


def _wrk_to(lb: Lab, port: int, name: str, seconds: float, ka: bool) -> tuple[float, float]:
    """wrk through a published port on loopback, or straight to the sandbox for "direct"."""
    url = f"http://{lb.ip4}:80/" if name == "direct" else f"http://127.0.0.1:{port}/"
    return _wrk(url, seconds, ka)


def measure_pss(backend_ip: str, n: int, say: Callable[[str], None] = print) -> dict[str, float]:
    """PSS (MB) of n published TCP ports: one ProxyServer process vs n docker-proxy processes."""
    ports = free_ports(n, start=40000)
    code = ("import ipaddress, signal, sys\n"
            "from portwright.model import Mapping\nfrom portwright.proxy.server import ProxyServer\n"
            f"ms = [Mapping('tcp', ipaddress.ip_address('127.0.0.1'), p, ipaddress.ip_address({backend_ip!r}), 80)"
            f" for p in {ports!r}]\n"
            "srv = ProxyServer(ms); srv.start(); print('ready', flush=True)\n"
            "signal.sigwait({signal.SIGTERM, signal.SIGINT})\n")
    signal.pthread_sigmask(signal.SIG_BLOCK, set())
    ours = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            preexec_fn=lambda: signal.pthread_sigmask(
                                signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT}))
    assert ours.stdout is not None
    ours.stdout.readline()
    time.sleep(0.5)
    ours_pss = pss_kb(ours.pid) / 1024
    ours.terminate()
    ours.wait()
    docker: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            docker.append(start_proxy([DOCKER_PROXY], "tcp", "127.0.0.1", port, backend_ip, 80))
        time.sleep(1.0)
        docker_pss = sum(pss_kb(p.pid) for p in docker) / 1024
    finally:
        for p in docker:
            p.terminate()
        for p in docker:
            p.wait()
    # the drop-in started the dockerd way: one Python process per port (sampled on 20 ports)
    sample = ports[:20]
    drop: list[subprocess.Popen[bytes]] = []
    try:
        for port in sample:
            drop.append(start_proxy([sys.executable, "-m", "portwright.proxy.dockerproxy"], "tcp",
                                    "127.0.0.1", port, backend_ip, 80))
        time.sleep(0.5)
        drop_each = sum(pss_kb(p.pid) for p in drop) / 1024 / len(sample)
    finally:
        for p in drop:
            p.terminate()
        for p in drop:
            p.wait()
    res = {"ports": float(n), "portwright_one_process_pss_mb": ours_pss,
           "docker_proxy_total_pss_mb": docker_pss, "docker_proxy_each_pss_mb": docker_pss / n,
           "portwright_dropin_each_pss_mb": drop_each}
    say("memory: " + ", ".join(f"{k}={v:.1f}" for k, v in res.items()))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m portwright.proxy.measure", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ports", type=int, default=1000)
    ap.add_argument("--json", help="write all samples to this file")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("measure needs root (namespaces); run it with sudo", file=sys.stderr)
        return 7
    for tool, pkg in (("iperf3", "iperf3"), ("wrk", "wrk"), ("nginx", "nginx-light")):
        if shutil.which(tool) is None:
            print(f"{tool} is not available; install it with: apt-get install {pkg}", file=sys.stderr)
            return 6
    if not os.path.exists(DOCKER_PROXY):
        print(f"{DOCKER_PROXY} is not available; install it with: apt-get install docker.io", file=sys.stderr)
        return 6
    _SECONDS[0] = a.seconds
    res = run(a.seconds, a.rounds, a.ports)
    print(json.dumps({"median": res["median"], "ratio": res["ratio_portwright_vs_docker_proxy"],
                      "memory": res["memory"], "machine": res["machine"]}, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
