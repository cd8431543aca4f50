"""State database: records, uniqueness, and race-free address allocation across processes."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os

import pytest

from portwright import ipam
from portwright.errors import Conflict, NotFound
from portwright.model import ANY4, Mapping, Network, Sandbox
from portwright.state import State, pid_alive, proc_start_time

NET = Network(
    name="n1",
    bridge="pw-test1",
    subnet4=ipaddress.IPv4Network("198.18.40.0/24"),
    gateway4=ipaddress.IPv4Address("198.18.40.1"),
)


def test_roundtrip(tmp_path: os.PathLike[str]) -> None:
    st = State(str(tmp_path))
    st.add_network(NET)
    with pytest.raises(Conflict):
        st.add_network(NET)
    sb = Sandbox(
        id="a" * 12,
        name="web",
        network="n1",
        netns="/run/netns/pw-web",
        veth="pwvaaaa",
        ip4=ipaddress.IPv4Address("198.18.40.2"),
    )
    st.insert_sandbox(sb, ["sleep", "1"], {"detach": True})
    with pytest.raises(Conflict):
        st.insert_sandbox(Sandbox(id="b" * 12, name="web", network="n1", netns=None, veth=None), ["x"], {})
    m = Mapping("tcp", ANY4, 8080, ipaddress.IPv4Address("198.18.40.2"), 80)
    st.set_ports(sb.id, [m])
    rec = st.sandbox("web")
    assert rec.sandbox.mappings == (m,) and rec.cmd == ("sleep", "1") and rec.status == "creating"
    assert st.sandbox("aaaa").id == sb.id  # unique id prefix
    st.remove_sandbox(sb.id)
    with pytest.raises(NotFound):
        st.sandbox("web")
    assert st.all_ports() == []


def _allocate(directory: str, n: int, out: multiprocessing.Queue[str]) -> None:
    st = State(directory)
    for i in range(n):
        with st.tx():
            used = [r.sandbox.ip4 for r in st.sandboxes() if r.sandbox.ip4]
            ip = ipam.next_address(NET.subnet4, used)
            sid = f"{os.getpid():06d}{i:06d}"
            st.insert_sandbox(
                Sandbox(id=sid, name=f"s{sid}", network="n1", netns=None, veth=None, ip4=ip),  # type: ignore[arg-type]
                ["true"],
                {},
            )
        out.put(str(ip))


def test_concurrent_allocation_never_duplicates(tmp_path: os.PathLike[str]) -> None:
    d = str(tmp_path)
    State(d).add_network(NET)
    q: multiprocessing.Queue[str] = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_allocate, args=(d, 20, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ips = [q.get() for _ in range(80)]
    assert len(set(ips)) == 80


def test_pid_alive() -> None:
    me = os.getpid()
    assert pid_alive(me, proc_start_time(me))
    assert not pid_alive(me, (proc_start_time(me) or 0) + 1)  # a reused pid is not our supervisor
    assert not pid_alive(None, None)
