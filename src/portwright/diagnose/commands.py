"""The ``who``, ``ports`` and ``audit`` subcommands' argparse registration, and nothing else.

``portwright`` builds its whole parser on every start, so this module stays light: it imports no
diagnose module. Each handler imports ``diagnose.cli`` (snapshot, nftview, audit: several
hundredths of a second of imports) only when its command runs.

``SEVERITIES`` is owned by ``audit``; it is repeated here so that ``--help`` needs no audit code,
and ``tests/unit/test_cli_commands.py`` keeps the copy equal to its owner.
"""

from __future__ import annotations

import argparse
from typing import Any

SEVERITIES = ("info", "low", "medium", "high")  # audit.SEVERITIES (see the module docstring)


def cmd_who(args: argparse.Namespace) -> int:
    from .cli import cmd_who as run

    return run(args)


def cmd_ports(args: argparse.Namespace) -> int:
    from .cli import cmd_ports as run

    return run(args)


def cmd_audit(args: argparse.Namespace) -> int:
    from .cli import cmd_audit as run

    return run(args)


def register(sub: Any) -> None:
    w = sub.add_parser(
        "who", help="who owns a host port: socket, NAT rule, sandbox/container, inner listener"
    )
    w.add_argument("port", help="PORT or PORT/PROTO (tcp, udp, sctp), e.g. 8080 or 53/udp")
    w.add_argument("--json", action="store_true", help="machine-readable output")
    w.set_defaults(func=cmd_who)

    p = sub.add_parser("ports", help="every published port on the host (portwright, Docker, host listeners)")
    p.add_argument("--published", action="store_true", help="hide plain host listeners")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ports)

    a = sub.add_parser("audit", help="find accidental exposure; exits 10 on findings at --fail-on or above")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.add_argument(
        "--allow-public",
        action="append",
        default=[],
        metavar="PORT[,PORT]",
        help="ports meant to be published on all interfaces",
    )
    a.add_argument(
        "--fail-on",
        choices=SEVERITIES,
        default="high",
        help="lowest severity that makes the exit code non-zero (default: high)",
    )
    a.add_argument(
        "--min-severity", choices=SEVERITIES, default="low", help="lowest severity to print (default: low)"
    )
    a.add_argument("-v", "--verbose", action="store_true", help="print the evidence of each finding")
    a.set_defaults(func=cmd_audit)
