"""The hosts-file block: other lines kept byte for byte, one block per state directory, removed
when empty, written by rename (a reader never sees a half-written file), and the env switch."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from portwright.dns import hosts

IP = ipaddress.IPv4Address("198.18.0.2")
IP6 = ipaddress.IPv6Address("2001:2::2")
BASE = "127.0.0.1\tlocalhost\n# a comment\n::1 localhost ip6-localhost"  # no final newline


def test_render_adds_replaces_and_removes_only_its_block() -> None:
    one = hosts.render(BASE, "/run/a", [("db.portwright", IP), ("db.portwright", IP6)])
    assert one.startswith(BASE + "\n")
    assert "198.18.0.2\tdb.portwright\n2001:2::2\tdb.portwright\n" in one
    two = hosts.render(one, "/run/b", [("web.portwright", IP)])
    assert two.count("# BEGIN portwright") == 2
    back = hosts.render(two, "/run/a", [])
    assert "db.portwright" not in back and "web.portwright" in back
    assert hosts.render(back, "/run/b", []) == BASE + "\n"
    assert hosts.render(one, "/run/a", [("db.portwright", IP), ("db.portwright", IP6)]) == one


def test_update_renames_and_keeps_mode(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text(BASE)
    os.chmod(path, 0o640)
    inode = path.stat().st_ino
    assert hosts.update(str(path), "/run/a", [("db.portwright", IP)])
    assert path.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert path.stat().st_mode & 0o777 == 0o640
    assert not hosts.update(str(path), "/run/a", [("db.portwright", IP)])  # no change, no write
    assert hosts.update(str(path), "/run/a", [])
    assert path.read_text() == BASE + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["hosts"]  # no temp file left


def test_path_default_state_dir_only_or_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(hosts.ENV, raising=False)
    assert hosts.hosts_path("/run/portwright") == "/etc/hosts"
    assert hosts.hosts_path("/tmp/pw-test-state-x") is None  # never the machine's file
    monkeypatch.setenv(hosts.ENV, "")
    assert hosts.hosts_path("/run/portwright") is None
    monkeypatch.setenv(hosts.ENV, "/tmp/x")
    assert hosts.hosts_path("/tmp/pw-test-state-x") == "/tmp/x"


def test_sweep_removes_dead_resolvers_blocks(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    text = hosts.render(BASE, "/run/a", [("a.portwright", IP)])
    path.write_text(hosts.render(text, "/run/b", [("b.portwright", IP)]))
    assert hosts.owners(path.read_text()) == ["/run/a", "/run/b"]
    assert hosts.sweep(str(path), lambda d: d == "/run/b") == ["/run/a"]
    assert "a.portwright" not in path.read_text() and "b.portwright" in path.read_text()
