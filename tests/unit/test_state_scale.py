"""Reading back a sandbox with 10,000 published ports (issue 11): what one command pays each time.

A command reads the same sandbox many times (reconcile, restore, teardown, each liveness check).
Decoding its 20,000 port rows used to parse 40,000 address strings on every read; they hold only a
handful of distinct addresses. These tests count the parses, not the time.
"""

from __future__ import annotations

import ipaddress
import os

import pytest

from portwright import model
from portwright.model import ANY4, ANY6, Mapping, Sandbox
from portwright.state import State

N = 10_000
SANDBOX_IP = ipaddress.IPv4Address("198.18.41.2")


def _big_sandbox(st: State) -> list[Mapping]:
    sb = Sandbox(id="c" * 12, name="big", network="n1", netns=None, veth=None, ip4=SANDBOX_IP)
    st.insert_sandbox(sb, ["sleep", "1"], {"detach": True})
    maps = [
        Mapping("tcp", host, 10_000 + i, SANDBOX_IP, 30_000 + i) for i in range(N) for host in (ANY4, ANY6)
    ]
    st.set_ports(sb.id, maps)
    return maps


def test_reading_a_big_sandbox_parses_each_address_once(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    st = State(str(tmp_path))
    maps = _big_sandbox(st)
    parsed: list[str] = []
    real = ipaddress.ip_address

    def counting(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(model.ipaddress, "ip_address", counting)
    cache = getattr(model, "_address", None)
    if cache is not None:
        cache.cache_clear()  # earlier tests' addresses are not this test's parses
    for _ in range(3):  # reconcile, restore, teardown: each reads it again
        recs = st.sandboxes()
        assert [r.sandbox.mappings for r in recs] == [tuple(maps)]
        assert st.sandbox("big").sandbox.mappings == tuple(maps)
    # three distinct addresses (0.0.0.0, ::, the sandbox's), not 6 x 40,000 parses
    assert len(parsed) <= 3, f"{len(parsed)} address parses for {N:,} ports read 6 times"


def test_a_changed_port_row_reads_back_changed(tmp_path: os.PathLike[str]) -> None:
    """The memo is keyed by the whole row: new ports for the same sandbox are read as written."""
    st = State(str(tmp_path))
    maps = _big_sandbox(st)
    assert st.sandbox("big").sandbox.mappings == tuple(maps)
    other = ipaddress.IPv4Address("198.18.41.3")
    moved = [Mapping(m.proto, m.host_ip, m.host_port + 1, other, m.container_port) for m in maps[:10]]
    st.set_ports("c" * 12, moved)
    assert st.sandbox("big").sandbox.mappings == tuple(moved)
    st.set_ports("c" * 12, [])
    assert st.sandbox("big").sandbox.mappings == ()
