"""``portwright bench``: the benchmark's top-level flow, run by ``commands.handle``.

Owns checking the options, root and signal handling, and the order of things: header, lab setup,
interleaved runs (or ``--scale``, or ``--sandboxes``), teardown in ``finally`` (SIGINT/SIGTERM/SIGHUP included, and a
second Ctrl-C cannot interrupt it), then the table, the ratios, and the --json/--plot/--html
files. ``handle`` returns the exit code: 0 when every run succeeded, 1 when any run failed
(the table says which), 130 on interrupt. The options themselves are declared in the light
``commands`` module, whose handler imports this one when ``bench`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from ..errors import BadInput, NeedRoot
from . import report, sandboxes
from .placement import PLACEMENTS
from .scale import ALL_SHAPES, run_scale, scale_table
from .scenarios import ANTISPOOF_AB, Config, Lab, machine_info, run_bench

DEFAULTS = Config()
SCALE_SECONDS = 2.0  # per iperf3 run in --scale (first and last port of each shape and size)


def _list(text: str, opt: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise BadInput(f"{opt}: give a comma-separated list")
    return items


def config_from_args(args: argparse.Namespace) -> Config:
    placements = ["local", "external"] if args.placement == "both" else _list(args.placement, "--placement")
    for pl in placements:
        if pl not in PLACEMENTS:
            raise BadInput(f"--placement {args.placement}: use local, external or both")
    mechanisms = _list(args.mechanisms, "--mechanisms")
    if getattr(args, "antispoof_ab", False):
        mechanisms = list(dict.fromkeys([*mechanisms, *ANTISPOOF_AB]))
    cfg = Config(
        mechanisms=mechanisms,
        placements=placements,
        scenarios=_list(args.scenarios, "--scenarios"),
        duration=DEFAULTS.duration if args.duration is None else args.duration,
        rounds=args.rounds,
        streams=args.streams,
        connections=args.connections,
        threads=args.threads,
    )
    cfg.validate()
    return cfg


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in _list(text, "--scale-sizes"))
    except ValueError as e:
        raise BadInput(f"--scale-sizes {text}: give whole numbers such as 1,100,1000") from e
    if any(not 1 <= n <= 20000 for n in sizes):
        raise BadInput(f"--scale-sizes {text}: each size must be between 1 and 20000")
    return sizes


def _shapes(text: str) -> tuple[str, ...]:
    shapes = tuple(_list(text, "--scale-shapes"))
    for sh in shapes:
        if sh not in ALL_SHAPES:
            raise BadInput(f"--scale-shapes: unknown shape {sh!r}; choose from {', '.join(ALL_SHAPES)}")
    return shapes


def _check_outputs(args: argparse.Namespace) -> None:
    if args.plot and os.path.splitext(args.plot)[1].lower() not in (".png", ".svg"):
        raise BadInput(f"--plot {args.plot}: give a file name ending in .png or .svg")
    if args.plot:
        from . import plot

        plot.require()  # before the run, not after it (issue 13)
    for opt in ("json", "plot", "html"):
        path = getattr(args, opt)
        if path:
            d = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(d):
                raise BadInput(
                    f"--{opt} {path}: directory {d} does not exist; create it or pick another path"
                )


class _Stop(KeyboardInterrupt):
    pass


@contextmanager
def _signals() -> Iterator[None]:
    def raise_stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop()

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for s in old:
        signal.signal(s, raise_stop)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _uninterruptible() -> Iterator[None]:
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for s in old:
        signal.signal(s, signal.SIG_IGN)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _sandbox_options(args: argparse.Namespace) -> tuple[int, tuple[str, ...]]:
    n = args.sandboxes
    if not 1 <= n <= 1000:
        raise BadInput(f"--sandboxes {n}: give a number of sandboxes between 1 and 1000")
    if args.scale:
        raise BadInput("--sandboxes and --scale are two experiments; run them one at a time")
    variants = tuple(_list(args.sandbox_variants, "--sandbox-variants"))
    for v in variants:
        if v not in sandboxes.VARIANTS:
            raise BadInput(
                f"--sandbox-variants: unknown variant {v!r}; choose from {', '.join(sandboxes.VARIANTS)}"
            )
    return n, variants


def _header(
    args: argparse.Namespace, cfg: Config, machine: dict[str, Any], conf: dict[str, Any]
) -> list[str]:
    head = report.header_lines(machine, conf)
    if args.sandboxes is not None:
        return [
            head[0],
            f"--sandboxes {args.sandboxes}: {cfg.rounds} interleaved rounds of portwright and "
            f"Docker, variants {args.sandbox_variants}",
        ]
    if args.scale:
        return [
            head[0],
            f"--scale: sizes {args.scale_sizes}; shapes {args.scale_shapes}; iperf3 -P 4 for "
            f"{SCALE_SECONDS if args.duration is None else cfg.duration:g} s to the first and the last port",
        ]
    return head


def _experiment(args: argparse.Namespace, cfg: Config, lab: Lab, log: Callable[[str], None]) -> Any:
    """Runs the chosen experiment in ``lab``; its raw result."""
    if args.sandboxes is not None:
        n, variants = _sandbox_options(args)
        if "published" in variants:
            lab.create_network()
        return sandboxes.run_sandboxes(lab, n, cfg.rounds, variants, log=log)
    if args.scale:
        shapes = _shapes(args.scale_shapes)
        if set(shapes) != {"nft-only"}:
            lab.create_network()
        secs = SCALE_SECONDS if args.duration is None else cfg.duration
        return run_scale(lab, _sizes(args.scale_sizes), shapes, seconds=secs, log=log)
    log("setting up sandboxes and peers")
    lab.open()
    return run_bench(cfg, lab, open(os.devnull, "w") if args.quiet else sys.stderr)  # noqa: SIM115


def _report(
    args: argparse.Namespace, machine: dict[str, Any], conf: dict[str, Any], result: Any
) -> tuple[dict[str, Any], str, bool]:
    """(the --json document, the text for stdout, whether any run failed)."""
    empty: dict[str, Any] = {
        "schema": report.SCHEMA,
        "machine": machine,
        "config": conf,
        "samples": [],
        "summary": [],
        "headline": [],
    }
    if args.sandboxes is not None:
        failed = any(not s["ok"] for s in result["samples"])
        return {**empty, "sandboxes": result}, sandboxes.table(result), failed
    if args.scale:
        failed = any(not r.get("ok") and not str(r.get("error", "")).startswith("skipped") for r in result)
        return {**empty, "scale": result}, scale_table(result), failed
    doc = report.document(machine, conf, result)
    text = report.table(doc["summary"], doc["skipped"]) + "\n\n" + report.headline_text(doc["headline"])
    return doc, text, any(not s.get("ok") for s in result["samples"])


def handle(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise NeedRoot("portwright bench (namespaces, nftables, iptables)")
    _check_outputs(args)
    cfg = config_from_args(args)
    if args.scale:  # bad input fails before any setup
        _sizes(args.scale_sizes)
        _shapes(args.scale_shapes)
    if args.sandboxes is not None:
        _sandbox_options(args)
    err = sys.stderr
    machine = machine_info()

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"bench: {msg}", file=err, flush=True)

    if args.scale or args.sandboxes is not None:
        cfg.mechanisms = []
    conf = cfg.to_json()
    print("\n".join(_header(args, cfg, machine, conf)), flush=True)
    lab = Lab(cfg, log)
    result: Any = None
    interrupted = False
    try:
        with _signals():
            result = _experiment(args, cfg, lab, log)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        with _uninterruptible():
            log("cleaning up")
            cleanup_errors = lab.close()
        for e in cleanup_errors:
            print(f"bench: cleanup: {e}", file=err)
    if interrupted:
        print("bench: interrupted; everything it created has been removed", file=err)
        return 130
    doc, text, failed = _report(args, machine, conf, result)
    print(text)
    _write_outputs(args, doc)
    return 1 if failed or cleanup_errors else 0


def _write_outputs(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
    if args.plot and doc["summary"]:
        from . import plot

        plot.write(args.plot, doc["summary"], report.header_lines(doc["machine"], doc["config"])[0])
    if args.html:
        from . import html

        html.write(args.html, doc)
