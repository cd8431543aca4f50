"""Coexistence with the host's own firewall: keep a FORWARD-DROP host from dropping our bridges.

nftables ends a packet's journey at the first drop of any base chain, while an accept ends only the
chain it is in. So the ``accept`` of our ``inet portwright`` forward chain cannot let published or
egress traffic through a host whose iptables ``filter FORWARD`` chain drops it: dockerd (policy
DROP), ufw (``DEFAULT_FORWARD_POLICY="DROP"`` with its ``ufw-*-forward`` chains hooked into FORWARD)
or a hardened iptables setup. ``sync`` keeps one tagged ACCEPT per direction per portwright bridge
at the top of the chain the host offers for it:

* dockerd: its documented DOCKER-USER chain (``dockeruser``), per family where dockerd made it;
* otherwise the built-in ``filter FORWARD`` chain (iptables-nft), when it exists and drops (policy
  DROP, or any rule at all besides ours: ufw's jumps, a hardened REJECT). Not ufw's own
  ``ufw-user-forward``: ufw rewrites that chain on every ``ufw reload``, while a rule in the
  built-in chain survives it (checked on Debian 12's ufw 0.36.2), so there is nothing to re-add.

On a firewalld host (its ``inet firewalld`` table exists) the bridges are bound to a ``portwright``
zone (target ACCEPT: sandbox egress) with a ``portwright-fwd`` policy (ANY -> portwright,
ACCEPT: published ports in), as dockerd does with its ``docker`` zone; a ``firewall-cmd --reload``
drops runtime bindings, and the next sync (within ``supervisor.DOCKER_USER_RECHECK_SECONDS``) binds
them again.

Rules are added with the first network and removed with the last (``sync([])``), tagged with the
iptables comment ``portwright``. Our nft forward chain still does the real filtering (only published
ports in, isolation between networks); these rules only stop the host's policy from overriding it.
A ``filter`` table that does not exist is never created: a host without iptables rules needs none.

Pure parsing (``forward_needs_accept``, ``ours``) is separate from the tool calls.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Sequence

from portwright.errors import KernelError
from portwright.firewall import dockeruser
from portwright.kernel import runner

FORWARD = "FORWARD"  # iptables' built-in forward chain, in table filter (nft: ip/ip6 filter FORWARD)
COMMENT = dockeruser.COMMENT  # one tag for every rule we put in an iptables chain
# iptables tool -> the nft family its tables live in (iptables-nft, Debian 12's default).
FAMILIES = {"iptables": "ip", "ip6tables": "ip6"}


def ours(listing: str, chain: str, comment: str = COMMENT) -> list[list[str]]:
    """Our rules (by comment) in an ``iptables -S CHAIN`` listing, as ``-S`` prints them."""
    out: list[list[str]] = []
    for line in listing.splitlines():
        words = shlex.split(line)
        if len(words) > 2 and words[:2] == ["-A", chain] and "--comment" in words:
            if words[words.index("--comment") + 1] == comment:
                out.append(words[2:])
    return out


def forward_needs_accept(listing: str, chain: str = FORWARD) -> bool:
    """Does this ``iptables -S FORWARD`` listing drop anything we would need? (policy DROP, or
    any rule that is not ours: a jump into ufw's chains or a REJECT can drop our traffic)."""
    for line in listing.splitlines():
        words = shlex.split(line)
        if words[:2] == ["-P", chain] and len(words) > 2 and words[2] == "DROP":
            return True
        if words[:2] == ["-A", chain] and words[2:] not in ours(line, chain):
            return True
    return False


def plan(
    bridges: Sequence[str], listing: str, chain: str = FORWARD
) -> tuple[list[list[str]], list[list[str]]]:
    """(rules to delete, rules to insert at the top) to make ``chain`` hold exactly our bridges'
    accepts; nothing is added to a chain that drops nothing."""
    have = ours(listing, chain)
    want = dockeruser.rule_specs(bridges) if bridges and forward_needs_accept(listing, chain) else []
    return [s for s in have if s not in want], [s for s in reversed(want) if s not in have]


def _tables(netns: str | None) -> set[tuple[str, str]]:
    """(family, name) of every nft table, without creating one."""
    p = runner.run(["nft", "-j", "list", "tables"], netns=dockeruser._ns(netns), timeout=30.0)
    if p.returncode != 0:
        return set()
    out: set[tuple[str, str]] = set()
    for obj in json.loads(p.stdout or "{}").get("nftables", []):
        t = obj.get("table")
        if t:
            out.add((str(t.get("family")), str(t.get("name"))))
    return out


# --- firewalld: our bridges in a zone of their own, with a forwarding policy (as dockerd's "docker"
# zone and "docker-forwarding" policy). A bridge in no zone falls into the default zone, whose
# forward rules reject sandbox egress. The zone and policy are permanent configuration (firewalld
# cannot create a zone at runtime); the bridges are runtime bindings, re-added after a reload.
FIREWALLD_TABLE = ("inet", "firewalld")  # present while firewalld (nftables backend) runs
ZONE = "portwright"
POLICY = "portwright-fwd"  # firewalld allows 18 characters
FIREWALL_CMD_TIMEOUT = 60.0
# firewalld's D-Bus name, object and interface prefix (firewalld's D-Bus API, "org.fedoraproject.FirewallD1").
DBUS_NAME = "org.fedoraproject.FirewallD1"
DBUS_PATH = "/org/fedoraproject/FirewallD1"


def zone_bound(table_text: str, bridge: str) -> bool:
    """Does firewalld's live table send ``bridge``'s forwarded traffic to our zone?"""
    return f'iifname "{bridge}" goto filter_FWD_{ZONE}' in table_text


def _fwcmd(args: list[str], netns: str | None, check: bool = True) -> runner.CompletedProcess[str]:
    p = runner.run(["firewall-cmd", *args], netns=dockeruser._ns(netns), timeout=FIREWALL_CMD_TIMEOUT)
    if check and p.returncode != 0:
        raise KernelError(f"firewall-cmd {' '.join(args)}", p.stderr or p.stdout or f"exit {p.returncode}")
    return p


def _dbus(method: str, *args: str, netns: str | None) -> list[str]:
    """Call firewalld's D-Bus API with ``dbus-send`` (a C program: milliseconds, where each
    ``firewall-cmd`` is a Python start of about a second); the reply's strings."""
    p = runner.run(
        [
            "dbus-send",
            "--system",
            "--print-reply",
            f"--dest={DBUS_NAME}",
            DBUS_PATH,
            f"{DBUS_NAME}.{method}",
            *args,
        ],
        netns=dockeruser._ns(netns),
        timeout=FIREWALL_CMD_TIMEOUT,
    )
    if p.returncode != 0:
        raise KernelError(
            f"firewalld D-Bus {method} {' '.join(args)}", p.stderr.strip() or f"exit {p.returncode}"
        )
    return reply_strings(p.stdout)


def reply_strings(out: str) -> list[str]:
    """The ``string "..."`` values of a ``dbus-send --print-reply`` answer."""
    return [m.group(1) for m in re.finditer(r'string "([^"]*)"', out)]


def _ensure_zone(netns: str | None) -> None:
    """Create the permanent zone and policy where missing, and load them (one reload)."""
    if ZONE in _dbus("zone.getZones", netns=netns) and POLICY in _dbus("policy.getPolicies", netns=netns):
        return
    steps: list[list[str]] = []
    if ZONE not in _fwcmd(["--permanent", "--get-zones"], netns).stdout.split():
        steps += [["--new-zone", ZONE], ["--zone", ZONE, "--set-target", "ACCEPT"]]
    if POLICY not in _fwcmd(["--permanent", "--get-policies"], netns).stdout.split():
        steps += [
            ["--new-policy", POLICY],
            ["--policy", POLICY, "--add-ingress-zone", "ANY"],
            ["--policy", POLICY, "--add-egress-zone", ZONE],
            ["--policy", POLICY, "--set-target", "ACCEPT"],
        ]
    for args in steps:
        _fwcmd(["--permanent", *args], netns)
    _fwcmd(["--reload"], netns)


def firewalld_sync(bridges: Sequence[str], netns: str | None) -> None:
    """Bind exactly ``bridges`` to our zone (runtime). Cheap when nothing is missing: one read of
    firewalld's nft table; otherwise a few D-Bus calls (firewall-cmd only to create the zone)."""
    table = runner.run(["nft", "list", "table", *FIREWALLD_TABLE], netns=dockeruser._ns(netns), timeout=30.0)
    text = table.stdout if table.returncode == 0 else ""
    if all(zone_bound(text, b) for b in bridges) and (bridges or f"goto filter_FWD_{ZONE}" not in text):
        return
    if bridges:
        _ensure_zone(netns)
    try:
        have = set(_dbus("zone.getInterfaces", f"string:{ZONE}", netns=netns))
    except KernelError:
        have = set()  # no such zone: nothing of ours is bound
    for b in sorted(have - set(bridges)):
        _dbus("zone.removeInterface", f"string:{ZONE}", f"string:{b}", netns=netns)
    for b in sorted(set(bridges) - have):
        _dbus("zone.changeZoneOfInterface", f"string:{ZONE}", f"string:{b}", netns=netns)


def sync(bridges: Sequence[str], *, netns: str | None = None) -> None:
    """Make the host's forward path accept exactly our ``bridges`` (none: remove every rule we
    added); idempotent, cheap when nothing changed (one ``nft list tables``, one listing per
    family)."""
    dockeruser.docker_user_sync(bridges, netns=netns)
    docker = {tool for tool, _ in dockeruser._listings(netns)}
    tables = _tables(netns)
    if FIREWALLD_TABLE in tables and runner.available("firewall-cmd"):
        firewalld_sync(bridges, netns)
    for tool, family in FAMILIES.items():
        if tool in docker or (family, "filter") not in tables or not runner.available(tool):
            continue  # dockerd's DOCKER-USER carries it, or there is no filter table to obey
        listing = dockeruser._run(tool, ["-t", "filter", "-S", FORWARD], netns)
        if listing.returncode != 0:
            continue  # the filter table has no FORWARD chain
        delete, insert = plan(bridges, listing.stdout)
        for spec in delete:
            _checked(tool, ["-t", "filter", "-D", FORWARD, *spec], netns)
        for spec in insert:
            _checked(tool, ["-t", "filter", "-I", FORWARD, "1", *spec], netns)


def rules_in_nftables() -> bool:
    """Do iptables and ip6tables here write nftables (iptables-nft, Debian's default since 10),
    so that every change to the rules ``sync`` reads moves the ruleset generation? With
    iptables-legacy (or a tool of unknown kind) they do not, and ``sync`` must always look."""
    for tool in FAMILIES:
        path = runner.resolved(tool)
        if path is not None and "nft" not in os.path.basename(path):
            return False
    return True


def _checked(tool: str, args: list[str], netns: str | None) -> None:
    p = dockeruser._run(tool, args, netns)
    if p.returncode != 0:
        raise KernelError(f"{tool} {' '.join(args)}", p.stderr or f"exit status {p.returncode}")
