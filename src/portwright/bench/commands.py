"""``portwright bench``'s argparse registration, and nothing that runs a benchmark.

``portwright`` builds its whole parser on every start (``portwright ps`` too), so this module
stays light: it imports no bench module. The handler imports ``bench.cli`` (scenarios, drivers,
report: a tenth of a second of imports) only when ``bench`` is the command that runs.

The names and defaults the options show are owned by the modules that run the bench
(``scenarios.MECHANISMS``, ``scale.SHAPES``, ``sandboxes.VARIANTS`` ...). They are repeated here
so that ``--help`` needs none of those modules, and ``tests/unit/test_cli_commands.py`` keeps
each copy equal to its owner.
"""

from __future__ import annotations

import argparse
from typing import Any

# Copies, kept equal by tests/unit/test_cli_commands.py (see the module docstring).
MECHANISMS = (
    "host",
    "host-remap",
    "direct",
    "nat",
    "ebpf",
    "proxy",
    "docker-proxy",
    "docker-iptables",
    "proxy-dropin",
    "direct-allowspoof",
    "nat-allowspoof",
    "firewall-host",
)  # scenarios
DEFAULT_MECHANISMS = (
    "host",
    "direct",
    "nat",
    "ebpf",
    "proxy",
    "docker-proxy",
    "docker-iptables",
)  # scenarios
SCENARIOS = ("bulk-in", "bulk-out", "conn", "rr", "bulk-udp")  # scenarios.SCENARIOS
DEFAULT_SCENARIOS = ("bulk-in", "bulk-out", "conn", "rr")  # scenarios
DEFAULT_DURATION = 3.0  # scenarios.Config
DEFAULT_ROUNDS = 3  # scenarios.Config
DEFAULT_STREAMS = 10  # scenarios.Config
DEFAULT_CONNECTIONS = 32  # scenarios.Config
DEFAULT_THREADS = 2  # scenarios.Config
SIZES = (1, 100, 1000, 10000)  # scale
SHAPES = ("nat", "ebpf", "proxy", "docker-iptables", "docker-proxy")  # scale
ALL_SHAPES = (*SHAPES, "proxy-dropin", "nft-only")  # scale
DEFAULT_SANDBOXES = 20  # sandboxes.DEFAULT_N
SANDBOX_VARIANTS = ("none", "published")  # sandboxes.VARIANTS
SCALE_SECONDS = 2.0  # cli.SCALE_SECONDS


def handle(args: argparse.Namespace) -> int:
    if args.dns:
        from .resolver import handle as run_dns_bench

        return run_dns_bench(args)
    from .cli import handle as run_bench_command

    return run_bench_command(args)


def _add_dns_args(p: Any) -> None:
    p.add_argument(
        "--dns",
        action="store_true",
        help="instead: the name resolver's latency from inside a sandbox and the queries/s it "
        "answers, with --dns-sandboxes sandboxes on one network (bench/resolver.py)",
    )
    p.add_argument("--dns-queries", type=int, default=10_000, help="--dns: sequential queries per round")
    p.add_argument("--dns-sandboxes", type=int, default=200, help="--dns: sandboxes on the network")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure host, nat, proxy, direct and Docker's own publishing side by side",
        description=(
            "Runs the seed article's experiment on this machine (iperf3 -P 10 through every "
            "publishing mechanism, CPU read from /proc/stat) plus connection-rate and "
            "keep-alive scenarios, interleaved over rounds. With no options it takes about "
            "4-5 minutes on 2 CPUs and cleans up everything it created."
        ),
    )
    p.add_argument(
        "--mechanisms",
        default=",".join(DEFAULT_MECHANISMS),
        help=f"comma-separated subset of {','.join(MECHANISMS)} (default: {','.join(DEFAULT_MECHANISMS)})",
    )
    p.add_argument(
        "--placement",
        default="local",
        help="where the client runs: local, external or both (default: local, as the article)",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: {','.join(DEFAULT_SCENARIOS)})",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"seconds per run (default {DEFAULT_DURATION:g}; {SCALE_SECONDS:g} with --scale)",
    )
    p.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help=f"interleaved rounds (default {DEFAULT_ROUNDS})"
    )
    p.add_argument(
        "--streams", type=int, default=DEFAULT_STREAMS, help=f"iperf3 -P (default {DEFAULT_STREAMS})"
    )
    p.add_argument(
        "--connections", type=int, default=DEFAULT_CONNECTIONS, help=f"wrk -c (default {DEFAULT_CONNECTIONS})"
    )
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=f"wrk -t (default {DEFAULT_THREADS})")
    p.add_argument("--json", metavar="FILE", help="write every raw sample and the aggregates as JSON")
    p.add_argument("--plot", metavar="FILE", help="write the chart (.png or .svg)")
    p.add_argument("--html", metavar="FILE", help="write a one-page report with chart and table")
    p.add_argument(
        "--scale",
        action="store_true",
        help="instead: publish 1, 100, 1,000 and 10,000 ports under each publisher and "
        "report setup/teardown time, first vs last port throughput and memory",
    )
    p.add_argument(
        "--scale-sizes",
        default=",".join(str(n) for n in SIZES),
        help="port counts for --scale (default 1,100,1000,10000)",
    )
    p.add_argument(
        "--scale-shapes",
        default=",".join(SHAPES),
        help=f"publishing shapes for --scale, a subset of {','.join(ALL_SHAPES)} "
        f"(default: {','.join(SHAPES)})",
    )
    p.add_argument(
        "--sandboxes",
        type=int,
        nargs="?",
        const=DEFAULT_SANDBOXES,
        metavar="N",
        help=f"instead: start N (default {DEFAULT_SANDBOXES}) idle sandboxes and as many Docker "
        "containers, and report the PSS each keeps and the time of one rm -f of all N",
    )
    p.add_argument(
        "--sandbox-variants",
        default=",".join(SANDBOX_VARIANTS),
        help="for --sandboxes: none (--network none), published (a bridge and one -p each)",
    )
    _add_antispoof_ab(p)
    _add_dns_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=handle)


def _add_antispoof_ab(p: Any) -> None:
    p.add_argument(
        "--antispoof-ab",
        action="store_true",
        help="measure direct and nat with and without the bridge's anti-spoofing checks, interleaved "
        "(adds direct-allowspoof and nat-allowspoof: the same paths to --allow-spoof sandboxes)",
    )
