"""``portwright proxy install|status``: the CLI's words for the dockerd drop-in (issue 15).

A light registration module (like ``bench.commands``): it declares the options; the handlers
import ``waiter``/``shared`` only when they run. ``install`` builds the tiny waiter that dockerd's
``--userland-proxy-path`` points at; ``status`` lists the shared relay's ports, the container
each one serves, its waiter's pid and the counters of all relay processes added up.
"""

from __future__ import annotations

import argparse
from typing import Any


def _install(args: argparse.Namespace) -> int:
    from .shared import install

    return install(args.path, args.dir, args.workers)


def _status(args: argparse.Namespace) -> int:
    from .shared import show_status

    return show_status(args.dir, args.json)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "proxy", help="the portwright-proxy drop-in for dockerd: install the waiter, show the relay"
    )
    psub = p.add_subparsers(dest="proxy_cmd", metavar="CMD", required=True)
    i = psub.add_parser("install", help="build the tiny waiter dockerd starts per port (needs gcc)")
    i.add_argument(
        "path", nargs="?", help="where to put it (default /usr/local/libexec/portwright/portwright-proxy)"
    )
    i.add_argument(
        "--workers", type=int, default=0, help="relay worker processes (default: one per core, at most 4)"
    )
    i.add_argument("--dir", help="the relay's directory (default /run/portwright/proxy)")
    i.set_defaults(func=_install)
    s = psub.add_parser("status", help="the shared relay's ports, containers, waiters and counters")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--dir", help="the relay's directory (default /run/portwright/proxy)")
    s.set_defaults(func=_status)
