"""Rootless checks of the lifecycle fixes of issue 18: names, state lookups and migration, the
relative-command check, and finding the cgroup2 hierarchy."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from portwright.errors import BadInput
from portwright.kernel import cgroup
from portwright.model import Sandbox
from portwright.spec import check_name, parse_sandbox_spec
from portwright.state import State
from portwright.supervisor import check_command


@pytest.mark.parametrize("bad", ["x\n", "web\n", "a b", "-x", "", "x" * 64])
def test_names_are_checked_whole(bad: str) -> None:
    with pytest.raises(BadInput):
        check_name(bad)


def test_a_good_name_passes() -> None:
    assert check_name("web.1_a-b") == "web.1_a-b"


def _insert(st: State, sid: str, name: str) -> None:
    with st.tx():
        st.insert_sandbox(
            Sandbox(
                id=sid,
                name=name,
                network="none",
                netns=None,
                veth=None,
                ip4=None,
                ip6=None,
                mac=None,
                publish_mode="nat",
            ),
            ["true"],
            spec={},
        )


def test_name_taken_is_exact_while_lookups_accept_id_prefixes(tmp_path: Path) -> None:
    st = State(str(tmp_path))
    _insert(st, "badc0ffee123", "other")
    assert not st.name_taken("bad")  # an id prefix is not a name
    assert not st.name_taken("badc0ffee123")
    assert st.name_taken("other")
    rec = st.find_sandbox("badc0")  # but 'rm badc0' still finds it, as docker does
    assert rec is not None and rec.name == "other"


def test_old_state_files_gain_the_cmd_start_column(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript(
        "CREATE TABLE sandboxes (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, network TEXT NOT NULL,"
        " netns TEXT, veth TEXT, ip4 TEXT, ip6 TEXT, mac TEXT, publish_mode TEXT NOT NULL DEFAULT 'nat',"
        " status TEXT NOT NULL, supervisor_pid INTEGER, supervisor_start INTEGER, cmd_pid INTEGER,"
        " cmd TEXT NOT NULL, spec TEXT NOT NULL DEFAULT '{}', exit_code INTEGER, log_path TEXT,"
        " created REAL NOT NULL);"
        "INSERT INTO sandboxes (id, name, network, status, cmd_pid, cmd, created)"
        " VALUES ('abc', 'old', 'none', 'running', 42, '[\"true\"]', 0);"
    )
    db.close()
    st = State(str(tmp_path))
    rec = st.sandbox("old")
    assert rec.cmd_pid == 42 and rec.cmd_start is None
    with st.tx():
        st.update_sandbox("abc", cmd_start=7)
    assert st.sandbox("old").cmd_start == 7


def test_relative_command_is_checked_against_cmds_directory(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    script.chmod(0o755)
    check_command(parse_sandbox_spec(["./script.sh"], cwd=str(tmp_path)))
    with pytest.raises(BadInput, match="script.sh"):
        check_command(parse_sandbox_spec(["./script.sh"], cwd="/"))


def test_cgroup2_root_prefers_the_unified_mount(tmp_path: Path) -> None:
    hybrid = tmp_path / "hybrid"
    hybrid.write_text(
        "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
        "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    )
    unified = tmp_path / "unified"
    unified.write_text("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n")
    v1 = tmp_path / "v1"
    v1.write_text("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n")
    assert cgroup.cgroup2_root(str(hybrid)) == "/sys/fs/cgroup/unified"
    assert cgroup.cgroup2_root(str(unified)) == "/sys/fs/cgroup"
    assert cgroup.cgroup2_root(str(v1)) is None
    assert cgroup.sandbox_path("abc", "/sys/fs/cgroup") == os.path.join(
        "/sys/fs/cgroup", cgroup.PARENT, "abc"
    )


def test_no_cgroup_means_nothing_to_kill_or_join() -> None:
    assert cgroup.kill(None) == []
    cgroup.join_fn(None)()  # a no-op, not an error
