"""audit checks the connect-time rewrite map against live sandboxes both ways (issue 11).

An entry no live sandbox owns is ``stale``; a running ebpf sandbox whose entries are missing, or
whose programs are detached, is ``degraded``. Pure: a recorded ``BpfView`` and state records.
"""

from __future__ import annotations

import ipaddress
import os

from portwright.diagnose.bpfview import BpfView, bpf_findings
from portwright.diagnose.nftview import Ruleset
from portwright.diagnose.snapshot import Snapshot
from portwright.model import ANY4, ANY6, Mapping, Sandbox
from portwright.owners import sandbox_owner
from portwright.publish.ebpf import owner_hash
from portwright.publish.ebpf_progs import SvcEntry
from portwright.state import State

IP = ipaddress.IPv4Address("198.18.43.2")
SID, GONE = "e" * 12, "f" * 12
MAPS = [
    Mapping("tcp", ANY4, 8080, IP, 80),
    Mapping("tcp", ANY6, 8080, IP, 80),
    Mapping("udp", ANY4, 5353, IP, 53),
]


def _entry(m: Mapping, sid: str) -> SvcEntry:
    return SvcEntry(
        m.proto, m.host_ip, m.host_port, m.container_ip, m.container_port, owner_hash(sandbox_owner(sid))
    )


def _snap(tmp: str, entries: list[SvcEntry], detached: tuple[str, ...] = (), note: str = "") -> Snapshot:
    st = State(tmp)
    if st.find_sandbox("web") is None:
        sb = Sandbox(id=SID, name="web", network="n1", netns=None, veth=None, ip4=IP, publish_mode="ebpf")
        st.insert_sandbox(sb, ["sleep", "1"], {"detach": True}, status="running")
        st.set_ports(SID, MAPS)
    return Snapshot(
        listeners=[],
        ruleset=Ruleset(),
        sandboxes=st.sandboxes(),
        bpf=BpfView(tuple(entries), detached, note),
        alive=lambda r: r.status == "running",
    )


def _codes(snap: Snapshot) -> list[tuple[str, str, str]]:
    return [(sev, code, subject) for sev, code, subject, *_ in bpf_findings(snap)]


def test_a_whole_map_is_quiet(tmp_path: os.PathLike[str]) -> None:
    assert _codes(_snap(str(tmp_path), [_entry(m, SID) for m in MAPS])) == []


def test_entries_missing_for_a_live_sandbox_are_degraded(tmp_path: os.PathLike[str]) -> None:
    found = bpf_findings(_snap(str(tmp_path), [_entry(MAPS[0], SID)]))
    assert [(f[0], f[1], f[2]) for f in found] == [("medium", "degraded", "sandbox web")]
    assert "2 of its 3" in found[0][3] and "tcp [::]:8080" in found[0][3]
    # another owner's entry for the same binding does not count as this sandbox's
    found = bpf_findings(
        _snap(str(tmp_path), [_entry(MAPS[0], SID), _entry(MAPS[1], GONE), _entry(MAPS[2], SID)])
    )
    assert sorted((f[1], f[2]) for f in found) == [("degraded", "sandbox web"), ("stale", "tcp [::]:8080")]


def test_an_entry_with_no_live_sandbox_is_stale(tmp_path: os.PathLike[str]) -> None:
    extra = Mapping("tcp", ANY4, 9090, ipaddress.IPv4Address("198.18.43.9"), 90)
    found = _codes(_snap(str(tmp_path), [*(_entry(m, SID) for m in MAPS), _entry(extra, GONE)]))
    assert found == [("low", "stale", "tcp 0.0.0.0:9090")]


def test_an_unreadable_map_is_not_called_empty(tmp_path: os.PathLike[str]) -> None:
    assert _codes(_snap(str(tmp_path), [], note="bpf maps not readable: EPERM")) == []
