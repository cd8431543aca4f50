"""The kernel's ruleset generation, which lets restore skip its read of a table that did not
change (#11), checked against real nftables in a throwaway namespace; and the detached holder of
many relays, whose teardown ran out of descriptors (EMFILE) at 10,000 ports."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time

import pytest
from pwutil import nft_owner_elements, within

import pwstate
from portwright.errors import KernelError
from portwright.firewall import nft, nfttext, rules
from portwright.firewall.nft import NftBackend
from portwright.kernel import nftevents
from portwright.model import ANY4, ANY6, Mapping


@pytest.fixture
def netns() -> object:
    name = f"pwtg{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_the_generation_moves_by_exactly_the_commits_apply_reports(netns: str) -> None:
    be = NftBackend(netns)
    g0 = be.generation()
    assert g0 is not None
    here = nftevents.generation()
    assert here is not None and here[0] != g0[0]  # another namespace, another cookie
    k = be.apply(rules.base_commands())  # concatenated maps: nft's text prelude, then the batch
    g1 = be.generation()
    assert k == 2 and g1 == (g0[0], g0[1] + 2)
    assert be.apply([{"add": {"table": {"family": "ip", "name": "pwtg_other"}}}]) == 1
    g2 = be.generation()
    assert g2 == (g0[0], g0[1] + 3)
    with pytest.raises(KernelError):  # refused by the kernel: aborted, nothing committed
        be.apply([{"delete": {"table": {"family": "ip", "name": "pwtg_absent"}}}])
    assert be.generation() == g2
    subprocess.run(["ip", "netns", "exec", netns, "nft", "flush", "ruleset"], check=True)
    assert be.generation() == (g0[0], g0[1] + 4)  # anyone's commit counts
    gone = NftBackend(f"{netns}-absent")
    assert gone.generation() is None


def _cli(env: dict[str, str], *args: str, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "portwright", *args]
    if limit is not None:
        cmd = ["prlimit", f"--nofile={limit}:{limit}", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_a_holder_of_many_relays_tears_down_itself_within_its_descriptor_limit() -> None:
    """nat mode keeps a relay per ``[::]:P`` for ``[::1]`` clients; the detached holder used to
    dup() every relay socket to keep its bindings while it unpublished, so with N relays under a
    limit below 2N it died of EMFILE and the fork server's reaper tore down in its place."""
    state = pwstate.private_state_dir("pw-fds-")
    env = {**os.environ, "PORTWRIGHT_STATE_DIR": state}
    net = f"fd{secrets.token_hex(3)}"
    name = f"fd{secrets.token_hex(3)}"
    n = 300
    try:
        p = _cli(env, "network", "create", net, "--subnet", "198.18.251.0/24")
        assert p.returncode == 0, p.stderr
        base = 31000
        p = _cli(
            env,
            "run", "-d", "--name", name, "--network", net, "--publish-mode", "nat",
            "-p", f"{base}-{base + n - 1}:{base}-{base + n - 1}", "--", "sleep", "2",
            limit=n + 250,  # room for n relays and the holder's own, not for n more dup()s
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        sid = p.stdout.strip()

        def status() -> str:
            q = _cli(env, "inspect", name)
            return str(json.loads(q.stdout)[0]["State"]["Status"]) if q.returncode == 0 else "gone"

        assert within(30, lambda: status() in ("exited", "gone"))
        with open(os.path.join(state, "logs", "supervisors.log")) as f:
            log = f.read()
        assert "Too many open files" not in log, log[-2000:]
        assert "supervisor:" not in log, log[-2000:]  # the holder finished by itself
        assert nft_owner_elements(f"pw:{sid}") == []
    finally:
        _cli(env, "rm", "-f", name)
        _cli(env, "network", "rm", net)
        for pat in (f"pw-dns {state}", f"pw-zygote {state}"):
            subprocess.run(["pkill", "-f", pat], check=False)
        time.sleep(0.2)
        pwstate.discard(state)


def test_elements_as_text_make_the_table_json_makes(netns: str) -> None:
    """The text path (firewall/nfttext.py) against nft's JSON path, on real nftables: the same
    elements with the same owner tags, and the same all-or-nothing deletes."""
    ip4, ip6 = ipaddress.IPv4Address("198.18.44.2"), ipaddress.IPv6Address("2001:2:0:44::2")
    maps = [Mapping("tcp", ANY4, p, ip4, p + 1) for p in range(30000, 30200)]
    maps += [Mapping("udp", ANY6, p, ip6, 53) for p in range(30000, 30100)]
    maps += [Mapping("tcp", ipaddress.IPv4Address("127.0.0.1"), 30500, ip4, 80)]
    maps += [Mapping("tcp", ipaddress.IPv6Address("2001:2:0:44::1"), 30501, ip6, 443)]
    be = NftBackend(netns)
    be.apply(rules.base_commands())
    cmds = rules.publish_commands("pw:0123456789ab", maps)
    assert nfttext.elements_text(cmds) is not None  # this batch goes as text
    be.apply(cmds)
    by_text = sorted(map(str, rules.published(be.read())))
    be.apply(rules.unpublish_commands("pw:0123456789ab", be.read()))
    assert rules.published(be.read()) == []
    nft.run([*cmds, rules.base_commands()[0]], netns=netns)  # with a non-element command: JSON
    by_json = sorted(map(str, rules.published(be.read())))
    assert by_text == by_json and len(by_text) == len(maps)
    before = be.generation()
    missing = rules.delete_elements_commands([*maps[:5], Mapping("tcp", ANY4, 31999, ip4, 1)])
    with pytest.raises(KernelError):  # one key absent: nothing deleted (what unpublish falls back on)
        be.apply(missing)
    assert be.generation() == before
    assert sorted(map(str, rules.published(be.read()))) == by_json
