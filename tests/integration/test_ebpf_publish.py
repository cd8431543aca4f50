"""Publish mode ebpf against the real kernel: local clients are connected straight to the
sandbox at connect() (``ss`` shows the sandbox as the socket's peer) while getpeername/recvfrom
show the address they dialled; remote clients and everything the programs must not touch keep
their usual path. Covers 127.0.0.1, [::1], localhost, a v4-only sandbox behind [::1], dual-stack
v4-mapped dialling, a loopback-bound client, UDP connected and unconnected, a socket created
before the programs were attached, another namespace through NAT, and nothing left after rm or
after kill -9 + any command (pins, map entries, attached programs)."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pwutil import SERVERS, curl, free_port, inspect, pw, temp_network, uniq, wait_tcp

from conftest import External, sh
from portwright.kernel import cgroup
from portwright.kernel.bpf.links import Link, cgroup_programs
from portwright.publish import ebpf
from portwright.publish import ebpf_progs as ep

pytestmark = pytest.mark.integration
CPORT = 7000


@dataclass
class Sandbox:
    name: str
    id: str
    port: int
    lo_port: int
    udp_port: int
    ip4: str
    ip6: str
    gateway4: str
    netns: str


def start(network: str, extra: list[str] | None = None) -> Sandbox:
    name = uniq("eb")
    port, lo_port, udp_port = free_port(), free_port(), free_port()
    pw(
        "run", "-d", "--name", name, "--network", network, "--publish-mode", "ebpf",
        "-p", f"{port}:{CPORT}", "-p", f"127.0.0.1:{lo_port}:{CPORT}", "-p", f"{udp_port}:{CPORT}/udp",
        *(extra or []), "--", sys.executable, str(SERVERS / "peer_server.py"), str(CPORT),
    )  # fmt: skip
    info = inspect(name)
    ns = info["NetworkSettings"]
    wait_tcp(None, ns["IPAddress"], CPORT)
    return Sandbox(
        name, info["Id"], port, lo_port, udp_port, ns["IPAddress"], ns["GlobalIPv6Address"], ns["Gateway"],
        ns["SandboxKey"],
    )  # fmt: skip


@pytest.fixture(scope="module")
def dual() -> Iterator[Sandbox]:
    with temp_network("--ipv6", prefix="ebd") as net:
        sb = start(net)
        yield sb
        pw("rm", "-f", sb.name, check=False)


@pytest.fixture(scope="module")
def v4only() -> Iterator[Sandbox]:
    with temp_network(prefix="eb4") as net:
        sb = start(net)
        yield sb
        pw("rm", "-f", sb.name, check=False)


def ss_peer(proto: str, local_port: int) -> str:
    """The kernel socket's real peer (``ss``), by the client's local port."""
    flag = "-Htn" if proto == "tcp" else "-Hun"
    out = sh("ss", flag, "state", "established" if proto == "tcp" else "all", f"sport = :{local_port}").stdout
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    return lines[0].split()[-1]


def norm(addr: str) -> str:
    """``[::ffff:198.18.0.2]:7000`` -> ``198.18.0.2:7000``; ``[2001:2::2]:7000`` stays."""
    return addr.replace("[::ffff:", "").replace("]", "") if addr.startswith("[::ffff:") else addr


def tcp_probe(family: int, host: str, port: int, bind: str | None = None) -> tuple[tuple, str, bytes]:  # type: ignore[type-arg]
    """Connect; return (getpeername, ss's peer, the server's reply)."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        if bind is not None:
            s.bind((bind, 0))
        s.connect((host, port))
        peer, real = s.getpeername(), ss_peer("tcp", s.getsockname()[1])
        s.sendall(b"probe\n")
        return peer, real, s.recv(200)


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_kernel_peer_is_the_sandbox_while_getpeername_shows_the_dialled_address(
    dual: Sandbox, family: int, host: str
) -> None:
    peer, real, reply = tcp_probe(family, host, dual.port)
    assert peer[:2] == (host, dual.port)
    want = f"{dual.ip4}:{CPORT}" if family == socket.AF_INET else f"[{dual.ip6}]:{CPORT}"
    assert real == want
    assert reply.startswith(b"PEER ")


def test_curl_reaches_the_sandbox_by_every_local_name(dual: Sandbox) -> None:
    for host in ("127.0.0.1", "[::1]", "localhost"):
        body = curl(f"http://{host}:{dual.port}/")
        # No masquerade on this path: the sandbox sees the host's bridge address.
        assert body.startswith("PEER ") and "127.0.0.1" not in body, (host, body)
    assert curl(f"http://127.0.0.1:{dual.lo_port}/").startswith("PEER ")


def test_v6_client_to_a_v4_only_sandbox(v4only: Sandbox) -> None:
    peer, real, reply = tcp_probe(socket.AF_INET6, "::1", v4only.port)
    assert peer[:2] == ("::1", v4only.port)
    assert norm(real) == f"{v4only.ip4}:{CPORT}"  # connect6 rewrote to ::ffff:<sandbox>
    assert reply.startswith(b"PEER ")
    assert curl(f"http://localhost:{v4only.port}/").startswith("PEER ")


def test_dual_stack_socket_dialling_a_v4_mapped_address(dual: Sandbox) -> None:
    peer, real, _ = tcp_probe(socket.AF_INET6, "::ffff:127.0.0.1", dual.port)
    assert peer[:2] == ("::ffff:127.0.0.1", dual.port)
    assert norm(real) == f"{dual.ip4}:{CPORT}"


def test_client_bound_to_loopback_first_keeps_the_nat_path(dual: Sandbox) -> None:
    peer, real, reply = tcp_probe(socket.AF_INET, "127.0.0.1", dual.port, bind="127.0.0.1")
    assert peer[:2] == ("127.0.0.1", dual.port)
    assert real == f"127.0.0.1:{dual.port}"  # not rewritten: 127.0.0.1 cannot leave through the bridge
    assert reply.startswith(b"PEER ")  # ... and NAT (masquerade) still serves it


def test_specific_binding_is_rewritten_only_for_its_address(dual: Sandbox) -> None:
    _, real, _ = tcp_probe(socket.AF_INET, "127.0.0.1", dual.lo_port)
    assert real == f"{dual.ip4}:{CPORT}"
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.settimeout(5)
        s.connect(("127.0.0.2", dual.lo_port))


def udp_pair(family: int, host: str, port: int, connected: bool) -> tuple[bytes, tuple, str | None]:  # type: ignore[type-arg]
    with socket.socket(family, socket.SOCK_DGRAM) as u:
        u.settimeout(2)
        for _ in range(5):
            if connected:
                u.connect((host, port))
                u.send(b"hello")
            else:
                u.sendto(b"hello", (host, port))
            try:
                data, src = u.recvfrom(200)
            except TimeoutError:
                continue
            real = ss_peer("udp", u.getsockname()[1]) if connected else None
            return data, src, real
    raise AssertionError(f"no UDP answer from {host}:{port}")


@pytest.mark.parametrize("connected", [False, True])
@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_udp(dual: Sandbox, v4only: Sandbox, family: int, host: str, connected: bool) -> None:
    for sb in (dual, v4only):
        data, src, real = udp_pair(family, host, sb.udp_port, connected)
        assert data.startswith(b"PEER ")
        assert src[:2] == (host, sb.udp_port)  # recvmsg shows the dialled address
        if connected:
            want = f"{sb.ip4}:{CPORT}" if family == socket.AF_INET or sb is v4only else f"[{sb.ip6}]:{CPORT}"
            assert norm(real or "") == want


def test_socket_created_before_the_programs_were_attached() -> None:
    early = socket.socket()
    with early, temp_network(prefix="ebe") as net:
        early.settimeout(5)
        sb = start(net)
        try:
            early.connect(("127.0.0.1", sb.port))
            assert ss_peer("tcp", early.getsockname()[1]) == f"{sb.ip4}:{CPORT}"
        finally:
            pw("rm", "-f", sb.name, check=False)


def test_another_namespace_arrives_through_nat_with_its_address(dual: Sandbox, external: External) -> None:
    body = external.run("curl", "-sS", "--max-time", "5", f"http://{external.host4}:{dual.port}/").stdout
    assert body.strip() == f"PEER {external.addr4}"


def test_the_sandbox_own_loopback_is_never_rewritten(dual: Sandbox) -> None:
    code = (
        "import socket\n"
        "l=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"l.bind(('127.0.0.1', {dual.port})); l.listen()\n"
        f"c=socket.create_connection(('127.0.0.1', {dual.port}), timeout=5)\n"
        "a, peer = l.accept(); print(c.getpeername()[0], a.getsockname()[1])\n"
    )
    out = sh("nsenter", f"--net={dual.netns}", sys.executable, "-c", code).stdout.split()
    assert out == ["127.0.0.1", str(dual.port)]


# ---------------------------------------------------------------------------- lifecycle


def our_prog_ids() -> set[int]:
    rw = ebpf.RewriteSet()
    ids = set()
    for name, *_ in ep.PROGRAMS:
        with Link.open_pinned(os.path.join(rw.dir, "link_" + name)) as link:
            ids.add(link.info().prog_id)
    return ids


def attached_ids() -> set[int]:
    root = cgroup.cgroup2_root()
    assert root is not None
    return {pid for _, att, *_ in ep.PROGRAMS for pid, _ in cgroup_programs(root, att)}


def svc_owners() -> set[int]:
    maps = ebpf.RewriteSet().open_maps()
    if maps is None:
        return set()
    try:
        return {ep.decode_svc(k, v).owner for k, v in maps.svc.items()}
    finally:
        maps.close()


def gone(sb: Sandbox, ids: set[int]) -> None:
    assert ebpf.owner_hash(f"pw:{sb.id}") not in svc_owners()
    from portwright.state import State

    others = [r for r in State().sandboxes() if r.status == "running" and r.sandbox.publish_mode == "ebpf"]
    if not others:  # the last ebpf publication of this state dir: programs detached, pins gone
        assert not (ids & attached_ids())
        assert not os.path.exists(ebpf.RewriteSet().dir)


@pytest.mark.parametrize("how", ["rm", "kill-9"])
def test_nothing_left(how: str) -> None:
    with temp_network(prefix="ebl") as net:
        sb = start(net)
        ids = our_prog_ids()
        assert ids <= attached_ids()
        assert ebpf.owner_hash(f"pw:{sb.id}") in svc_owners()
        if how == "rm":
            pw("rm", "-f", sb.name)
        else:
            os.kill(inspect(sb.name)["State"]["SupervisorPid"], signal.SIGKILL)
            time.sleep(0.3)
            pw("ps")  # any command reconciles
        gone(sb, ids)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", sb.port), timeout=2).close()
        pw("rm", "-f", sb.name, check=False)


def test_mode_is_shown(dual: Sandbox) -> None:
    assert inspect(dual.name)["PublishMode"] == "ebpf"


def test_default_is_ebpf_here_and_nat_without_cgroup2() -> None:
    with temp_network(prefix="ebn") as net:
        name, port = uniq("ebn"), free_port()
        pw("run", "-d", "--name", name, "--network", net, "-p", f"{port}:{CPORT}", "--", "sleep", "30")
        assert inspect(name)["PublishMode"] == "ebpf"
        pw("rm", "-f", name)
        # A host without a cgroup2 mount (its own mount namespace, cgroup2 unmounted there).
        root = cgroup.cgroup2_root()
        cmd = f"umount {root} && {sys.executable} -m portwright run -d --name {name} --network {net} -p {port}:{CPORT} -- sleep 30"
        p = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        notes = [ln for ln in p.stderr.splitlines() if "publish mode nat" in ln]
        assert len(notes) == 1 and "no cgroup2 hierarchy" in notes[0], p.stderr
        assert inspect(name)["PublishMode"] == "nat"
        pw("rm", "-f", name)


def test_any_command_reattaches_detached_programs_and_drops_stale_entries(dual: Sandbox) -> None:
    rw = ebpf.RewriteSet()
    with Link.open_pinned(os.path.join(rw.dir, "link_connect4")) as link:
        link.detach()  # someone detached it (bpftool, a cgroup cleanup)
    assert rw.missing_links() == ["connect4"]
    _, real, _ = tcp_probe(socket.AF_INET, "127.0.0.1", dual.port)
    assert real == f"127.0.0.1:{dual.port}"  # degraded to the NAT path, still served
    stale = ep.svc_key("tcp", ipaddress.ip_address("127.0.0.1"), 9)
    maps = rw.open_maps()
    assert maps is not None
    try:
        maps.svc.update(
            stale, ep.svc_value(ipaddress.ip_address("198.18.0.9"), 9, ebpf.owner_hash("pw:gone"))
        )
    finally:
        maps.close()
    findings = json.loads(pw("audit", "--json", check=False).stdout)["findings"]
    codes = {(f["code"], f["subject"]) for f in findings}
    assert ("degraded", f"sandbox {dual.name}") in codes, findings
    assert ("stale", "tcp 127.0.0.1:9") in codes, findings
    err = pw("ps").stderr
    assert "attached again connect4" in err and "removed 1 rewrite entries" in err, err
    assert rw.missing_links() == []
    assert ebpf.owner_hash("pw:gone") not in svc_owners()
    _, real, _ = tcp_probe(socket.AF_INET, "127.0.0.1", dual.port)
    assert real == f"{dual.ip4}:{CPORT}"


def test_who_names_the_rewrite_for_local_paths_and_nat_for_remote(dual: Sandbox) -> None:
    out = pw("who", str(dual.port)).stdout
    local = [ln for ln in out.splitlines() if "127.0.0.1  " in ln or "[::1]  " in ln]
    assert len(local) == 2, out
    assert f"rewritten at connect() to {dual.ip4}:{CPORT} by portwright" in local[0], out
    assert f"rewritten at connect() to [{dual.ip6}]:{CPORT} by portwright" in local[1], out
    assert "(other machines)" in out and "DNAT ->" in out, out


def test_a_firewall_reload_takes_the_nat_half_and_any_command_puts_it_back(
    dual: Sandbox, external: External
) -> None:
    sh("nft", "delete", "element", "inet", "portwright", "pub4_any", "{", f"tcp . {dual.port}", "}")
    assert f"tcp . {dual.port}" not in sh("nft", "list", "map", "inet", "portwright", "pub4_any").stdout
    pw("ps")  # reconcile restores running sandboxes' NAT elements, ebpf's included
    assert f"tcp . {dual.port}" in sh("nft", "list", "map", "inet", "portwright", "pub4_any").stdout
    body = external.run("curl", "-sS", "--max-time", "5", f"http://{external.host4}:{dual.port}/").stdout
    assert body.strip() == f"PEER {external.addr4}"
