"""hostfw's pure half: which FORWARD listings need our accepts, and the edit that gets them there."""

from __future__ import annotations

from portwright.firewall import hostfw

UFW = """-P FORWARD DROP
-A FORWARD -j ufw-before-logging-forward
-A FORWARD -j ufw-before-forward
"""
OURS = """-P FORWARD DROP
-A FORWARD -i pw-a -m comment --comment portwright -j ACCEPT
-A FORWARD -o pw-a -m comment --comment portwright -j ACCEPT
-A FORWARD -j ufw-before-forward
"""


def test_policy_drop_or_foreign_rules_need_accepts() -> None:
    assert hostfw.forward_needs_accept(UFW)
    assert hostfw.forward_needs_accept("-P FORWARD ACCEPT\n-A FORWARD -j REJECT\n")
    assert not hostfw.forward_needs_accept("-P FORWARD ACCEPT\n")
    # Only our own rules left in an accepting chain: nothing needs them.
    only_ours = "-P FORWARD ACCEPT\n-A FORWARD -i pw-a -m comment --comment portwright -j ACCEPT\n"
    assert not hostfw.forward_needs_accept(only_ours)


def test_plan_adds_both_directions_once_and_removes_with_the_last_network() -> None:
    delete, insert = hostfw.plan(["pw-a"], UFW)
    assert delete == []
    assert [s[:2] for s in insert] == [["-o", "pw-a"], ["-i", "pw-a"]]  # inserted at 1: -i ends on top
    assert hostfw.plan(["pw-a"], OURS) == ([], [])
    delete, insert = hostfw.plan([], OURS)
    assert insert == [] and [s[:2] for s in delete] == [["-i", "pw-a"], ["-o", "pw-a"]]


def test_plan_replaces_a_removed_bridge_and_ignores_other_comments() -> None:
    other = OURS + "-A FORWARD -i x -m comment --comment someone -j ACCEPT\n"
    delete, insert = hostfw.plan(["pw-b"], other)
    assert [s[1] for s in delete] == ["pw-a", "pw-a"]
    assert [s[1] for s in insert] == ["pw-b", "pw-b"]
    assert hostfw.ours(other, "FORWARD", "someone") == [
        ["-i", "x", "-m", "comment", "--comment", "someone", "-j", "ACCEPT"]
    ]


def test_an_accepting_chain_gets_nothing() -> None:
    assert hostfw.plan(["pw-a"], "-P FORWARD ACCEPT\n") == ([], [])


def test_firewalld_helpers_read_dbus_replies_and_nft_bindings() -> None:
    reply = 'method return time=1 sender=:1.2 -> destination=:1.3 serial=9 reply_serial=2\n   array [\n      string "pw-a"\n      string "pw-b"\n   ]\n'
    assert hostfw.reply_strings(reply) == ["pw-a", "pw-b"]
    table = '\t\tiifname "pw-a" goto filter_FWD_portwright\n\t\tiifname "pw-b" goto filter_FWD_public\n'
    assert hostfw.zone_bound(table, "pw-a") and not hostfw.zone_bound(table, "pw-b")
    assert len(hostfw.POLICY) <= 18  # firewalld refuses longer policy names
