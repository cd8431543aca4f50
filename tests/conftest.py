"""Shared test configuration: a throwaway state directory for the whole session, and a final sweep.

Every portwright call in a test (library or subprocess) sees PORTWRIGHT_STATE_DIR. When the session
ends, whatever is still recorded there — sandboxes, networks (the default ``pw0`` included) — is
removed, and so is the ``inet portwright`` table once nothing in it is owned by anyone. Last, the
bpffs pins of every state dir of the session (its own and the private ones tests register through
``pwstate``) must be gone: any left are removed and fail the session, naming the test after which
each appeared.
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

import pwstate


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
    _drop_unused_antispoof()


def _drop_unused_antispoof() -> None:
    """``table bridge portwright_antispoof`` is the host's, shared by every state dir: the last
    protected sandbox's teardown deletes it, and this deletes one an earlier version left empty.
    Any element (another user's sandbox) keeps it; decided and applied under the table lock."""
    from portwright.errors import PortwrightError
    from portwright.firewall import antispoof
    from portwright.firewall.backend import default_firewall

    backend = default_firewall().backend
    try:
        with backend.lock():
            cmds = antispoof.delete_if_unused(backend.read_table(antispoof.FAMILY, antispoof.TABLE))
            if cmds:
                backend.apply(cmds)
    except PortwrightError as e:
        _findings.append(f"table bridge portwright_antispoof left: {e}")


#: Problems the session end found, printed in the terminal summary.
_findings: list[str] = []
#: The pin dirs present when the session started (others' too: never touched).
_pins_before: set[str] = set()


def _check_pins() -> None:
    """bpffs pins (ebpf links at the machine's cgroup root) of the session's state dirs: the
    session's own and every private one a test registered (tests/pwstate.py). Once every sandbox
    is removed none should be left; those that are go now, and the session fails, naming them.
    New pin dirs of unregistered state dirs are only reported: they may be another user's."""
    present = pwstate.pin_dirs()
    known, seen = pwstate.registered(), pwstate.first_seen()
    left = pwstate.leftovers(present, known, seen)
    for lo in left:
        pwstate.remove(str(lo.state_dir))
    strays = pwstate.unattributed(present, _pins_before, known, seen)
    if strays:
        _findings.append(
            pwstate.report("bpffs pin dirs of state dirs this session did not register (left alone)", strays)
        )
    if left:
        msg = pwstate.report("bpffs pin dirs left by this session's state dirs (removed now)", left)
        _findings.append(msg)
        raise AssertionError(msg)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for finding in _findings:
        terminalreporter.write_line(finding, red=True)


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
    pwstate.register(os.environ["PORTWRIGHT_STATE_DIR"])
    _pins_before.update(pwstate.pin_dirs())
    yield
    if os.geteuid() == 0:
        _sweep()
        if shutil.which("nft"):
            _drop_new_empty_iptables_tables(tables_before)
    if own:
        shutil.rmtree(os.environ.pop("PORTWRIGHT_STATE_DIR"), ignore_errors=True)
    if os.geteuid() == 0:
        _check_pins()  # last: it fails the session when a test leaked pins
