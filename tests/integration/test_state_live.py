"""The state directory, live (issue 13), in a throwaway namespace that plays the host.

A damaged database: every command still works, the running sandboxes (both holding shapes) are
listed again from the kernel and can be removed, and one warning line says what was rebuilt and
where the old file went. A newer schema is refused in one line. Secrets on disk: a sandbox's
output is unreadable to other users, and after kill -9 of supervisors ``rm -f`` removes their
control sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator

from hostns import HostNS, host_namespace
from pwutil import within

SLEEPER = ("--", "sleep", "300")


@contextlib.contextmanager
def _host() -> Iterator[tuple[HostNS, str, str]]:
    sfx = secrets.token_hex(3)
    a, b = f"r13a{sfx}", f"r13b{sfx}"
    try:
        with host_namespace() as h:
            yield h, a, b
    finally:
        for n in (a, b):
            path = f"/run/netns/pw-{n}"
            if os.path.exists(path) and not os.path.ismount(path):
                os.unlink(path)


def _ps(h: HostNS) -> dict[str, dict[str, object]]:
    out = h.pw("ps", "-a", "--format", "json").stdout.strip()
    recs = json.loads(out) if out.startswith("[") else [json.loads(x) for x in out.splitlines() if x]
    return {str(r.get("Names") or r.get("Name")): r for r in recs}


def test_a_damaged_database_is_rebuilt_from_the_kernel() -> None:
    with _host() as (h, a, b):
        # tini-held (no relay) and Python-held (nat's [::1] relay)
        h.pw("run", "-d", "--name", a, "-p", "127.0.0.1:18090:80", *SLEEPER)
        h.pw("run", "-d", "--name", b, "-p", "18091:80", *SLEEPER)
        before = _ps(h)
        assert {a, b} <= set(before)
        db = os.path.join(h.state, "state.db")
        with open(db, "wb") as f:
            f.write(b"garbage, not a database\n" * 200)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(db + suffix)
        p = h.pw("ps")
        assert "Traceback" not in p.stderr
        warn = [line for line in p.stderr.splitlines() if "rebuilt" in line]
        assert len(warn) == 1 and a in warn[0] and b in warn[0] and "state.db.corrupt-" in warn[0], p.stderr
        aside = [n for n in os.listdir(h.state) if n.startswith("state.db.corrupt-")]
        assert aside and open(os.path.join(h.state, aside[0]), "rb").read().startswith(b"garbage")
        after = _ps(h)
        for n in (a, b):
            assert after[n]["ID"] == before[n]["ID"] and str(after[n]["Status"]).startswith("Up"), after[n]
        assert "18090" in str(after[a]["Ports"]) and "18091" in str(after[b]["Ports"])
        assert "rebuilt" not in h.pw("ps").stderr  # once
        h.pw("rm", "-f", a, b)
        assert not {a, b} & set(_ps(h))
        assert "pw:" not in h.run("nft", "list", "table", "inet", "portwright", check=False).stdout
        for n in (a, b):
            assert (
                subprocess.run(["ip", "netns", "exec", h.name, "test", "-e", f"/run/netns/pw-{n}"]).returncode
                != 0
            )


def test_a_newer_schema_is_refused_in_one_line() -> None:
    with _host() as (h, _a, _b):
        h.pw("network", "ls")
        db = sqlite3.connect(os.path.join(h.state, "state.db"))
        db.execute("PRAGMA user_version = 99")
        db.commit()
        db.close()
        for args in (("ps",), ("rm", "-f", "x"), ("network", "ls")):
            p = h.pw(*args, check=False)
            assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
            assert len(p.stderr.strip().splitlines()) == 1 and "newer" in p.stderr


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_secrets_on_disk_are_root_only_and_ctl_sockets_go_with_rm() -> None:
    with _host() as (h, a, b):
        for n in (a, b):  # Python supervisors (nat's [::1] relay): each serves a control socket
            h.pw(
                "run",
                "-d",
                "--name",
                n,
                "-e",
                "DB_PASSWORD=hunter2",
                "-p",
                f"{18092 + (n == b)}:80",
                "--",
                "sh",
                "-c",
                "echo DB_PASSWORD=$DB_PASSWORD; sleep 300",
            )
        full = {n: json.loads(h.pw("inspect", n).stdout) for n in (a, b)}
        full = {n: (d[0] if isinstance(d, list) else d) for n, d in full.items()}
        sids = {n: str(full[n]["Id"]) for n in (a, b)}
        assert _mode(h.state) == 0o700
        logs = os.path.join(h.state, "logs")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            "hunter2" in open(os.path.join(logs, f), errors="replace").read()
            for f in os.listdir(logs)
            if f.endswith((".log", ".records"))
        ):
            time.sleep(0.1)
        secret = [f for f in os.listdir(logs) if "hunter2" in open(os.path.join(logs, f)).read()]
        assert secret
        nobody = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "cat",
            os.path.join(logs, secret[0]),
        ]
        r = subprocess.run(nobody, capture_output=True, text=True)
        assert r.returncode != 0 and "hunter2" not in r.stdout
        h.pw("ps")  # the next command fixes every mode
        assert {_mode(os.path.join(logs, f)) & 0o077 for f in os.listdir(logs)} == {0}
        assert _mode(os.path.join(h.state, "state.db")) == 0o600
        ctl = os.path.join(h.state, "ctl")
        socks = {n: os.path.join(ctl, f"{sids[n]}.sock") for n in (a, b)}
        assert all(os.path.exists(s) for s in socks.values()), os.listdir(ctl)
        for n in (a, b):
            os.kill(int(full[n]["State"]["SupervisorPid"]), signal.SIGKILL)
        time.sleep(0.3)
        h.pw("rm", "-f", a, b)
        left = [s for s in socks.values() if os.path.exists(s)]
        assert not left, left
        # Inside 'ip netns exec' there is no cgroup2 to kill: CMD's process group must go too,
        # whether reconcile or the fork server's reaper tears the sandbox down (both CMDs stayed).
        marker = "echo DB_PASSWORD=$DB_PASSWORD; sleep 300"
        assert within(5, lambda: not _cmdline_pids(marker)), _cmdline_pids(marker)


def _cmdline_pids(text: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    out.append(int(pid))
        except (OSError, ValueError):
            continue
    return out
