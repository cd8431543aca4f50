"""The tests' own bookkeeping of state directories and bpffs pin dirs (tests/pwstate.py), no root.

The session end fails on pins of registered state dirs and only reports the others, so which is
which must be exact: a pin dir of another user's live state dir is never removed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pwstate
from portwright.kernel.bpf import fs


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pwstate, "_registered", {})
    monkeypatch.setattr(pwstate, "_first_seen", {})


def test_a_state_dir_owns_its_pin_dir_and_its_cni_plugins() -> None:
    got = pwstate.pin_dirs_of("/run/pwh-abc")
    assert got == {
        fs.pin_dir("/run/pwh-abc"): "/run/pwh-abc",
        fs.pin_dir("/run/pwh-abc/cni"): "/run/pwh-abc/cni",
    }
    assert all(os.path.dirname(p) == fs.PIN_PARENT for p in got)


def test_leftovers_are_only_registered_state_dirs_pins() -> None:
    ours = pwstate.register("/tmp/pw-test-state-x")
    theirs = fs.pin_dir("/tmp/pw/s10k")  # another user's: present, never ours
    present = {fs.pin_dir(ours), fs.pin_dir(ours + "/cni"), theirs}
    left = pwstate.leftovers(present, pwstate.registered())
    assert {lo.pin_dir for lo in left} == {fs.pin_dir(ours), fs.pin_dir(ours + "/cni")}
    assert {lo.state_dir for lo in left} == {ours, ours + "/cni"}


def test_unattributed_are_new_and_unregistered() -> None:
    ours = pwstate.register("/run/pwh-1")
    old, new = fs.pin_dir("/run/portwright"), fs.pin_dir("/somewhere/else")
    present = {old, new, fs.pin_dir(ours)}
    strays = pwstate.unattributed(present, {old}, pwstate.registered())
    assert [lo.pin_dir for lo in strays] == [new] and strays[0].state_dir is None


def test_note_keeps_the_first_test_a_pin_dir_appeared_after() -> None:
    a, b = fs.pin_dir("/a"), fs.pin_dir("/b")
    pwstate.note(set(), {a}, "tests/integration/test_x.py::test_one")
    pwstate.note({a}, {a, b}, "tests/integration/test_x.py::test_two")
    pwstate.note(set(), {a, b}, "tests/integration/test_y.py::test_three")
    assert pwstate.first_seen() == {
        a: "tests/integration/test_x.py::test_one",
        b: "tests/integration/test_x.py::test_two",
    }
    left = pwstate.leftovers({a}, {a: "/a"}, pwstate.first_seen())
    assert left[0].line() == f"{a} (state dir /a, first seen after tests/integration/test_x.py::test_one)"


def test_report_names_every_pin_dir_and_whose_it_is() -> None:
    items = [
        pwstate.Leftover("/sys/fs/bpf/portwright/1", "/run/pwh-1"),
        pwstate.Leftover("/sys/fs/bpf/portwright/2", None),
    ]
    assert pwstate.report("left", items).splitlines() == [
        "left (2):",
        "  /sys/fs/bpf/portwright/1 (state dir /run/pwh-1)",
        "  /sys/fs/bpf/portwright/2 (a state dir this session did not register)",
    ]


def test_pin_dirs_lists_a_parent_and_is_empty_without_one(tmp_path: Path) -> None:
    (tmp_path / "k1").mkdir()
    (tmp_path / "k2").mkdir()
    assert pwstate.pin_dirs(str(tmp_path)) == {str(tmp_path / "k1"), str(tmp_path / "k2")}
    assert pwstate.pin_dirs(str(tmp_path / "absent")) == set()


def test_private_state_dir_is_registered_and_discard_removes_pins_then_the_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed: list[str] = []
    monkeypatch.setattr(pwstate.fs, "remove_pins", removed.append)
    state = pwstate.private_state_dir("pwt-unit-", str(tmp_path))
    assert os.path.isdir(state) and set(pwstate.registered().values()) == {state, state + "/cni"}
    pwstate.discard(state)
    assert sorted(removed) == sorted([fs.pin_dir(state), fs.pin_dir(state + "/cni")])
    assert not os.path.exists(state)
