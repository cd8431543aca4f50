"""The anti-spoofing table (``bridge portwright_antispoof``) lives exactly as long as a protected
sandbox does: the last one's teardown deletes it, so no empty table with a base chain on the bridge
prerouting hook is left behind (seen after CI). Runs in a throwaway host namespace, so the
machine's table, shared with other users, is never touched."""

from __future__ import annotations

import json
import secrets
import subprocess

import pytest
from hostns import HostNS, host_namespace

pytestmark = pytest.mark.integration


def _table(h: HostNS) -> dict[str, object] | None:
    p: subprocess.CompletedProcess[str] = h.run(
        "nft", "-j", "list", "table", "bridge", "portwright_antispoof", check=False
    )
    return json.loads(p.stdout) if p.returncode == 0 else None


def _ports(h: HostNS) -> list[object]:
    table = _table(h)
    assert table is not None
    items = table["nftables"]
    assert isinstance(items, list)
    return [e for i in items if "set" in i and i["set"]["name"] == "ports" for e in i["set"].get("elem", [])]


def test_the_last_sandbox_out_deletes_the_antispoof_table() -> None:
    sfx = secrets.token_hex(3)  # /run/netns is shared by every host namespace: names of our own
    a1, a2, a3 = (f"as{i}{sfx}" for i in (1, 2, 3))
    with host_namespace("pwas") as h:
        h.pw("network", "create", "nas", "--subnet", "198.18.219.0/24")
        assert _table(h) is None
        for name in (a1, a2):
            h.pw("run", "-d", "--name", name, "--network", "nas", "--", "sleep", "600")
        assert len(_ports(h)) == 2
        h.pw("rm", "-f", a1)
        assert len(_ports(h)) == 1  # still protecting the second
        h.pw("rm", "-f", a2)
        assert _table(h) is None
        h.pw("run", "-d", "--name", a3, "--network", "nas", "--", "sleep", "600")
        assert len(_ports(h)) == 1  # the next sandbox creates it again
        h.pw("rm", "-f", a3)
        assert _table(h) is None
