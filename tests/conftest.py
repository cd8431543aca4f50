"""Shared test configuration: a throwaway state directory for the whole session, and a final sweep.

Every portwright call in a test (library or subprocess) sees PORTWRIGHT_STATE_DIR. When the session
ends, whatever is still recorded there — sandboxes, networks (the default ``pw0`` included) — is
removed, and so is the ``inet portwright`` table once nothing in it is owned by anyone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest


def _pw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portwright", *args], capture_output=True, text=True, timeout=120
    )


def _nft_tables() -> set[str]:
    r = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    return (
        {ln.strip() for ln in r.stdout.splitlines() if ln.startswith("table ")}
        if r.returncode == 0
        else set()
    )


def _drop_new_empty_iptables_tables(before: set[str]) -> None:
    """iptables-nft (dockerd, Docker's rule shape in the bench) creates ``ip filter``/``ip nat``
    tables; drop those the session created once they hold no rule."""
    for line in sorted(_nft_tables() - before):
        _, family, name = line.split()
        if family not in ("ip", "ip6") or name not in ("filter", "nat", "mangle", "raw", "security"):
            continue
        listing = subprocess.run(
            ["nft", "list", "table", family, name], capture_output=True, text=True
        ).stdout
        if not any(
            ln.strip() and not ln.strip().startswith(("table", "chain", "type", "}", "policy"))
            for ln in listing.splitlines()
        ):
            subprocess.run(["nft", "delete", "table", family, name], capture_output=True)


def _sweep() -> None:
    ps = _pw("ps", "-a", "--format", "json")
    for rec in json.loads(ps.stdout or "[]") if ps.returncode == 0 else []:
        _pw("rm", "-f", rec["Id"])
    nets = _pw("network", "ls", "--format", "json")
    for net in json.loads(nets.stdout or "[]") if nets.returncode == 0 else []:
        _pw("network", "rm", net["Name"])
    from portwright.errors import PortwrightError
    from portwright.firewall import nft
    from portwright.zygote import stop_server

    stop_server(os.environ["PORTWRIGHT_STATE_DIR"])  # the session's fork server, if one runs
    from portwright.dns.service import LiveDns

    LiveDns(os.environ["PORTWRIGHT_STATE_DIR"]).stop()  # and its resolver

    try:
        nft.remove_table()  # refuses while any owner or network remains (another user's, say)
    except PortwrightError:
        pass
    from portwright.kernel.bpf import fs

    fs.remove_pins(fs.pin_dir(os.environ["PORTWRIGHT_STATE_DIR"]))  # ebpf links at the cgroup root


@pytest.fixture(autouse=True, scope="session")
def _state_dir() -> Iterator[None]:
    own = "PORTWRIGHT_STATE_DIR" not in os.environ
    if own:
        os.environ["PORTWRIGHT_STATE_DIR"] = tempfile.mkdtemp(prefix="pw-test-state-")
    # NAME.portwright goes to a hosts file of the session's, never the machine's /etc/hosts (dns/).
    os.environ.setdefault("PORTWRIGHT_HOSTS_FILE", os.path.join(os.environ["PORTWRIGHT_STATE_DIR"], "hosts"))
    # and names the resolver forwards go nowhere (SERVFAIL) unless a test names its own upstream.
    os.environ.setdefault(
        "PORTWRIGHT_UPSTREAM_RESOLV_CONF", os.path.join(os.environ["PORTWRIGHT_STATE_DIR"], "no-upstreams")
    )
    tables_before = _nft_tables() if os.geteuid() == 0 and shutil.which("nft") else set()
    yield
    if os.geteuid() == 0:
        _sweep()
        if shutil.which("nft"):
            _drop_new_empty_iptables_tables(tables_before)
    if own:
        shutil.rmtree(os.environ.pop("PORTWRIGHT_STATE_DIR"), ignore_errors=True)
