"""A sandbox's mappings are read once per change (state.State._ports_of, #11): one command reads
a 10,000-port sandbox many times, and each read of its 20,000 rows cost a tenth of a second. The
cache must never show stale rows: not after another process wrote, not after this one wrote,
and not after a rolled-back transaction."""

from __future__ import annotations

import ipaddress
import os

import pytest

from portwright.model import ANY4, Mapping, Sandbox
from portwright.state import State

IP = ipaddress.IPv4Address("198.18.42.2")
SID = "d" * 12


def _maps(first: int, n: int) -> list[Mapping]:
    return [Mapping("tcp", ANY4, p, IP, 80) for p in range(first, first + n)]


def _sandbox(st: State) -> None:
    sb = Sandbox(id=SID, name="cached", network="n1", netns=None, veth=None, ip4=IP)
    st.insert_sandbox(sb, ["sleep", "1"], {"detach": True})


def test_another_connections_write_is_seen(tmp_path: os.PathLike[str]) -> None:
    mine, theirs = State(str(tmp_path)), State(str(tmp_path))
    _sandbox(mine)
    mine.set_ports(SID, _maps(8000, 3))
    assert mine.sandbox(SID).sandbox.mappings == tuple(_maps(8000, 3))
    first = mine.sandbox(SID).sandbox.mappings
    assert mine.sandbox(SID).sandbox.mappings is first  # read once, then shared
    with theirs.tx():
        theirs.set_ports(SID, _maps(9000, 2))  # the supervisor, say, in its own process
    assert mine.sandbox(SID).sandbox.mappings == tuple(_maps(9000, 2))


def test_this_connections_own_writes_are_seen(tmp_path: os.PathLike[str]) -> None:
    st = State(str(tmp_path))
    _sandbox(st)
    st.set_ports(SID, _maps(8000, 3))
    assert st.sandbox(SID).sandbox.mappings == tuple(_maps(8000, 3))
    st.set_ports(SID, _maps(8100, 1))
    assert st.sandbox(SID).sandbox.mappings == tuple(_maps(8100, 1))
    with st.tx():
        st.remove_sandbox(SID)
    assert st.find_sandbox(SID) is None


def test_a_rolled_back_write_is_not_remembered(tmp_path: os.PathLike[str]) -> None:
    st = State(str(tmp_path))
    _sandbox(st)
    with st.tx():
        st.set_ports(SID, _maps(8000, 3))
    with pytest.raises(RuntimeError), st.tx():
        st.set_ports(SID, _maps(9000, 5))
        assert st.sandbox(SID).sandbox.mappings == tuple(_maps(9000, 5))  # inside: its own rows
        raise RuntimeError("undo")
    assert st.sandbox(SID).sandbox.mappings == tuple(_maps(8000, 3))


def test_a_row_read_back_equals_the_mapping_written() -> None:
    m = Mapping("udp", ipaddress.IPv6Address("2001:2::5"), 5353, ipaddress.IPv6Address("2001:2::6"), 53)
    assert Mapping.from_row("udp", "2001:2::5", 5353, "2001:2::6", 53) == m
    with pytest.raises(ValueError):
        Mapping.from_row("icmp", "2001:2::5", 1, "2001:2::6", 1)


def test_an_older_files_unused_port_index_is_dropped(tmp_path: os.PathLike[str]) -> None:
    """Writing 20,000 port rows paid for an index no query used (#11); older files lose it."""
    import sqlite3

    State(str(tmp_path)).close()
    path = os.path.join(str(tmp_path), "state.db")
    db = sqlite3.connect(path)
    db.execute("CREATE INDEX ports_by_port ON ports(proto, host_port)")
    db.commit()
    db.close()
    st = State(str(tmp_path))
    names = {r[0] for r in st.db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "ports_by_port" not in names
    _sandbox(st)
    st.set_ports(SID, _maps(8000, 2))
    assert st.sandbox(SID).sandbox.mappings == tuple(_maps(8000, 2))
