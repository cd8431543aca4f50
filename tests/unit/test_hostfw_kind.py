"""Whether the host's iptables writes nftables (firewall/hostfw.rules_in_nftables): only then may
a sync of the host firewall that changed nothing be skipped until the generation moves (#11)."""

from __future__ import annotations

import pytest

from portwright.firewall import hostfw
from portwright.kernel import runner


@pytest.mark.parametrize(
    ("resolved", "counted"),
    [
        ({"iptables": "/usr/sbin/xtables-nft-multi", "ip6tables": "/usr/sbin/xtables-nft-multi"}, True),
        ({"iptables": "/usr/sbin/iptables-nft", "ip6tables": None}, True),  # no ip6tables: nothing to read
        ({"iptables": "/usr/sbin/xtables-legacy-multi", "ip6tables": "/usr/sbin/xtables-nft-multi"}, False),
        ({"iptables": "/usr/sbin/iptables", "ip6tables": "/usr/sbin/iptables"}, False),  # unknown kind
        ({"iptables": None, "ip6tables": None}, True),
    ],
)
def test_only_nftables_backed_tools_count(
    monkeypatch: pytest.MonkeyPatch, resolved: dict[str, str | None], counted: bool
) -> None:
    monkeypatch.setattr(runner, "resolved", lambda tool: resolved.get(tool))
    assert hostfw.rules_in_nftables() is counted
