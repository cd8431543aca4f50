"""The ``who``, ``ports`` and ``audit`` subcommands: their handlers and human/JSON output.

``commands.register(subparsers)`` declares them (light, so ``portwright`` starts fast) and its
handlers import this module when one of them runs; each handler returns its exit code.
Human output is short and aligned, and coloured only when stdout is a terminal (and NO_COLOR
is unset). ``audit`` exits 10 when it finds something at or above ``--fail-on`` (default
high), so it can gate a CI job; every other failure keeps the PortwrightError exit codes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import BadInput
from . import audit as audit_mod
from . import ports as ports_mod
from . import who as who_mod
from .snapshot import collect

AUDIT_FAIL_EXIT = 10
_COLOURS = {"high": "31;1", "medium": "33", "low": "36", "info": "2"}


def _colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def paint(text: str, severity: str) -> str:
    return f"\x1b[{_COLOURS[severity]}m{text}\x1b[0m" if _colour() and severity in _COLOURS else text


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; trailing blanks trimmed."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for r in [headers, *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _dump(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def cmd_who(args: argparse.Namespace) -> int:
    port, proto = who_mod.parse_port(args.port)
    rep = who_mod.who(collect("portwright who"), port, proto)
    if args.json:
        _dump(rep.to_json())
    else:
        print(who_mod.render(rep))
    return 0


def cmd_ports(args: argparse.Namespace) -> int:
    snap = collect("portwright ports")
    rows = ports_mod.port_rows(snap, include_listeners=not args.published)
    if args.json:
        _dump({"ports": [r.to_json() for r in rows], "notes": snap.notes})
        return 0
    print(table(ports_mod.HEADERS, ports_mod.table_rows(rows)) if rows else "no published ports or listeners")
    for n in snap.notes:
        print(f"note: {n}")
    return 0


def _allow(values: list[str]) -> set[int]:
    out: set[int] = set()
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or not 1 <= int(part) <= 65535:
                raise BadInput(
                    f"--allow-public {part!r} is not a port in 1-65535; write e.g. --allow-public 80,443"
                )
            out.add(int(part))
    return out


def cmd_audit(args: argparse.Namespace) -> int:
    allow = _allow(args.allow_public)
    rep = audit_mod.audit(collect("portwright audit"), allow)
    failing = rep.at_least(args.fail_on)
    if args.json:
        _dump({**rep.to_json(), "fail_on": args.fail_on, "failed": bool(failing)})
    else:
        shown = rep.at_least(args.min_severity)
        if not shown:
            print(
                "no findings" + (f" at {args.min_severity} or above" if args.min_severity != "info" else "")
            )
        for f in shown:
            print(f"{paint(f.severity.upper().ljust(6), f.severity)} {f.code:<16} {f.subject}")
            print(f"       {f.message}")
            if args.verbose:
                for e in f.evidence:
                    print(f"       evidence: {e}")
            print(f"       fix: {f.fix}")
        for n in rep.notes:
            print(f"note: {n}")
        counts = rep.to_json()["counts"]
        print(", ".join(f"{counts[s]} {s}" for s in reversed(audit_mod.SEVERITIES)))
    return AUDIT_FAIL_EXIT if failing else 0
