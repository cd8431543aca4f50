"""The state directory after issue 13: a damaged database is set aside and marked for a rebuild,
a newer schema is refused in one line, and the directory, logs, database and control sockets are
root-only (and made so when an older release left them readable)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from portwright.errors import PortwrightError
from portwright.rebuild import parse_supervisor, warning
from portwright.state import SCHEMA_VERSION, State


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.mark.parametrize("garbage", [b"this is not a database " * 100, b"SQLite format 3\0" + b"\xff" * 4000])
def test_a_damaged_database_is_set_aside_and_marked(tmp_path: Path, garbage: bytes) -> None:
    State(str(tmp_path)).close()
    (tmp_path / "state.db").write_bytes(garbage)
    st = State(str(tmp_path))  # no traceback
    pending = st.rebuild_pending()
    assert pending is not None
    aside, why = pending
    assert os.path.dirname(aside) == str(tmp_path) and ".corrupt-" in aside
    assert Path(aside).read_bytes() == garbage and why
    assert st.sandboxes() == [] and st.networks() == []  # a fresh, working database
    st.rebuild_done()
    assert st.rebuild_pending() is None
    st.close()
    assert State(str(tmp_path)).rebuild_pending() is None  # opened again: nothing more to do


def test_a_newer_schema_is_refused_in_one_line(tmp_path: Path) -> None:
    State(str(tmp_path)).close()
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.commit()
    db.close()
    with pytest.raises(PortwrightError) as e:
        State(str(tmp_path))
    assert "\n" not in str(e.value) and "newer" in str(e.value) and str(SCHEMA_VERSION + 5) in str(e.value)
    assert not list(tmp_path.glob("state.db.corrupt-*"))  # not mistaken for damage


def test_an_older_file_is_migrated_to_this_schema(tmp_path: Path) -> None:
    State(str(tmp_path)).close()
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("PRAGMA user_version = 0")
    db.commit()
    db.close()
    State(str(tmp_path)).close()
    db = sqlite3.connect(tmp_path / "state.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_state_is_root_only_and_an_old_directory_is_fixed(tmp_path: Path) -> None:
    d = tmp_path / "pw"
    State(str(d)).close()
    assert _mode(d) == 0o700 and _mode(d / "logs") == 0o700 and _mode(d / "state.db") == 0o600
    # what an older release left: 0755 directories, 0644 files
    for p in (d, d / "logs"):
        os.chmod(p, 0o755)
    (d / "ctl").mkdir(mode=0o755)
    for name in ("abc.log", "abc.stderr.log", "supervisors.log"):
        (d / "logs" / name).write_text("DB_PASSWORD=hunter2\n")
        os.chmod(d / "logs" / name, 0o644)
    os.chmod(d / "state.db", 0o644)
    (d / "ctl" / "abc.sock").write_text("")
    os.chmod(d / "ctl" / "abc.sock", 0o755)
    State(str(d)).close()  # the next command
    assert _mode(d) == _mode(d / "logs") == _mode(d / "ctl") == 0o700
    assert {_mode(p) for p in (d / "logs").iterdir()} == {0o600}
    assert _mode(d / "state.db") == 0o600 and _mode(d / "ctl" / "abc.sock") == 0o600


def test_supervisors_are_told_apart_from_other_processes() -> None:
    assert parse_supervisor(["portwright:web", "-s", "-g", "--", "python3", "-m", "http.server"]) == (
        "web",
        ("python3", "-m", "http.server"),
    )
    assert parse_supervisor(["portwright _supervise db"]) == ("db", ())
    assert parse_supervisor(["portwright:web", "infinity"]) is None  # the socket holder
    assert parse_supervisor(["python3", "-m", "portwright", "ps"]) is None
    assert parse_supervisor([]) is None


def test_the_warning_is_one_line_naming_what_and_where() -> None:
    line = warning("/run/portwright/state.db.corrupt-X", "file is not a database", ["pw0"], ["a", "b"])
    assert "\n" not in line and "a, b" in line and "pw0" in line and "state.db.corrupt-X" in line


def test_a_supervisors_helpers_are_never_taken_for_cmd_or_miss_its_id() -> None:
    """CMD of a detached sandbox writes into its log collector's pipes, so the sandbox's id comes
    from the collector's command line; the collector and a resolver re-parented to the
    supervisor (a subreaper) are never its CMD."""
    from portwright.rebuild import HELPERS, _program, _sid_in

    assert _program(["/run/portwright/bin/portwright-logs", "/x/logs/0123456789ab.records"]) in HELPERS
    assert _program(["pw-dns /run/portwright"]) in HELPERS  # a setproctitle title: one argument
    assert _program(["python3", "-m", "http.server"]) not in HELPERS
    assert _sid_in("/run/portwright/logs/0123456789ab.records", "/run/portwright") == "0123456789ab"
    assert _sid_in("/run/portwright/logs/0123456789ab.stderr.log", "/run/portwright") == "0123456789ab"
    assert _sid_in("/elsewhere/logs/0123456789ab.records", "/run/portwright") is None
    assert _sid_in("/run/portwright/logs/not-an-id.records", "/run/portwright") is None
