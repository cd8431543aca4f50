"""A read-only model of the host's whole nftables ruleset, and a walk of it for one packet.

``nft -j list ruleset`` shows every table: portwright's ``inet portwright`` (publishing maps whose
elements carry an owner comment) and the ``ip nat``/``ip filter`` tables that iptables-nft
builds for Docker. The JSON hides one thing: iptables-nft's DNAT target is an opaque ``xt``
expression, so its destination is taken from the text listing (``nft -a list ruleset``) joined
by rule handle. Parsing and the walk are pure, so they are tested on recorded rulesets.

The walk answers "where does a packet to daddr:dport go": it follows the base chains of one
hook in priority order through jumps, gotos, verdict maps and DNAT maps, and reports the DNAT
(or drop) it meets with the trace of rules that led there. Matches it does not understand
(most ``xt`` matches, e.g. Docker's ``addrtype --dst-type LOCAL``) are assumed to match and
are listed in the trace as assumptions.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import KernelError, NeedRoot
from ..kernel import runner
from ..model import IPAddress

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
# Priority of the nat hook's DNAT stage (NF_IP_PRI_NAT_DST): earlier chains can drop before DNAT.
NAT_DST_PRIORITY = -100
READ_TIMEOUT = 30.0  # seconds for one ``nft list ruleset``
PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58}
_DNAT_TEXT = re.compile(
    r"\bdnat(?: ip6?)? to (\[[0-9a-fA-F:.]+\]|[0-9a-fA-F:.]+?)(?::(\d+)(?:-\d+)?)?(?:\s|$)"
)
_REDIRECT_TEXT = re.compile(r"\bredirect to :(\d+)")


# ---------------------------------------------------------------- model
@dataclass(frozen=True, slots=True)
class Cond:
    """One match: ``key op values``. Keys: iifname oifname daddr saddr l4proto dport local unknown."""

    key: str
    neg: bool
    values: tuple[Any, ...]
    text: str = ""

    def describe(self) -> str:
        return self.text or f"{self.key} {'!=' if self.neg else '=='} {self.values}"


@dataclass(frozen=True, slots=True)
class MapLookup:
    """``... to <key exprs> map @name`` or ``<key exprs> vmap @name``."""

    name: str
    keys: tuple[str, ...]  # cond keys of the concatenated key: l4proto, daddr, dport, iifname ...


@dataclass(frozen=True, slots=True)
class Rule:
    family: str
    table: str
    chain: str
    handle: int
    conds: tuple[Cond, ...]
    verdict: str  # jump goto return accept drop reject dnat vmap continue
    target: str | None = None  # chain of a jump/goto
    to_addr: IPAddress | None = None
    to_port: int | None = None
    to_family: int | None = None
    lookup: MapLookup | None = None  # DNAT through a map, or a verdict map
    comment: str | None = None
    text: str = ""

    @property
    def where(self) -> str:
        return f"{self.family} {self.table} {self.chain}"


@dataclass(frozen=True, slots=True)
class Chain:
    family: str
    table: str
    name: str
    hook: str | None = None
    type: str | None = None
    prio: int = 0
    policy: str | None = None
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class Element:
    key: tuple[Any, ...]  # per component: value, ("prefix", net), ("range", lo, hi), ("set", [...])
    value: tuple[Any, ...]  # addr[, port] for DNAT maps, or ("jump"|"goto", chain) for verdict maps
    comment: str | None


@dataclass(frozen=True, slots=True)
class NftMap:
    family: str
    table: str
    name: str
    key_types: tuple[str, ...]
    value_types: tuple[str, ...]
    elements: tuple[Element, ...] = ()


@dataclass
class Ruleset:
    chains: dict[tuple[str, str, str], Chain] = field(default_factory=dict)
    maps: dict[tuple[str, str, str], NftMap] = field(default_factory=dict)
    tables: list[tuple[str, str]] = field(default_factory=list)
    sets: dict[tuple[str, str, str], tuple[str, ...]] = field(default_factory=dict)  # plain elements

    def base_chains(self, hook: str, family: int | None = None, type_: str | None = None) -> list[Chain]:
        fams = {4: ("ip", "inet"), 6: ("ip6", "inet"), None: ("ip", "ip6", "inet")}[family]
        out = [
            c
            for c in self.chains.values()
            if c.hook == hook and c.family in fams and (type_ is None or c.type == type_)
        ]
        return sorted(out, key=lambda c: c.prio)

    def chain(self, family: str, table: str, name: str) -> Chain | None:
        return self.chains.get((family, table, name))


# ---------------------------------------------------------------- parsing
def _net(v: Any) -> IPNet | None:
    try:
        if isinstance(v, str):
            return ipaddress.ip_network(v, strict=False)
        if isinstance(v, dict) and "prefix" in v:
            p = v["prefix"]
            return ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=False)
        if isinstance(v, dict) and "range" in v:
            lo, hi = v["range"]
            nets: list[IPNet] = list(
                ipaddress.summarize_address_range(ipaddress.ip_address(lo), ipaddress.ip_address(hi))
            )
            return nets[0] if len(nets) == 1 else None
    except (ValueError, TypeError, KeyError):
        return None
    return None


def _atoms(right: Any) -> list[Any]:
    if isinstance(right, dict) and "set" in right:
        return list(right["set"])
    return [right]


def _port_range(v: Any) -> tuple[int, int] | None:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, str) and v.isdigit():
        return (int(v), int(v))
    if isinstance(v, dict) and "range" in v:
        lo, hi = v["range"]
        return (int(lo), int(hi))
    if isinstance(v, str) and v in _SERVICES:
        return (_SERVICES[v], _SERVICES[v])
    return None


_SERVICES = {"http": 80, "https": 443, "ssh": 22, "domain": 53, "ftp": 21, "smtp": 25}


def _key_of(left: Any) -> str | None:
    """Which packet property an expression reads: iifname, daddr, dport, l4proto, ..."""
    if not isinstance(left, dict):
        return None
    if "meta" in left:
        k = left["meta"].get("key")
        if k in ("iifname", "oifname", "l4proto", "nfproto"):
            return str(k)
        if k == "iif":
            return "iifname"
        return None
    if "payload" in left:
        p = left["payload"]
        proto, fld = p.get("protocol"), p.get("field")
        if proto in ("ip", "ip6") and fld in ("daddr", "saddr"):
            return str(fld)
        if proto in ("tcp", "udp", "sctp", "th", "udplite", "dccp") and fld in ("dport", "sport"):
            return f"{fld}:{proto}"
        if proto in ("ip", "ip6") and fld in ("protocol", "nexthdr"):
            return "l4proto"
        return None
    if "ct" in left and left["ct"].get("key") in ("state", "status") and "dir" not in left["ct"]:
        return "ct" + str(left["ct"]["key"])  # ctstate | ctstatus (hostview evaluates them)
    if "fib" in left:
        f = left["fib"]
        if f.get("result") == "type" and "daddr" in (f.get("flags") or []):
            return "fibtype"
    return None


def _cond(match: dict[str, Any]) -> list[Cond]:
    op = match.get("op", "==")
    neg = op == "!="
    key = _key_of(match.get("left"))
    right = match.get("right")
    text = ""
    if key is None:
        return [Cond("unknown", False, (json.dumps(match.get("left"), sort_keys=True),), text="?")]
    if op not in ("==", "!=", "in"):
        return [Cond("unknown", False, (op,), text=f"{key} {op} ...")]
    atoms = _atoms(right)
    if key in ("daddr", "saddr"):
        nets = tuple(n for n in (_net(a) for a in atoms) if n is not None)
        text = f"{key} {'!=' if neg else '=='} {','.join(map(str, nets))}"
        return [Cond(key, neg, nets, text)]
    if key.startswith(("dport:", "sport:")):
        fld, proto = key.split(":")
        conds = []
        if proto in ("tcp", "udp", "sctp"):
            conds.append(Cond("l4proto", False, (proto,), f"l4proto {proto}"))
        ports = tuple(p for p in (_port_range(a) for a in atoms) if p)
        conds.append(Cond(fld, neg, ports, f"{fld} {'!=' if neg else '=='} {_ports_text(ports)}"))
        return conds
    if key == "l4proto":
        vals = tuple(_proto_name(a) for a in atoms)
        return [Cond("l4proto", neg, vals, f"l4proto {'!= ' if neg else ''}{','.join(vals)}")]
    if key in ("iifname", "oifname"):
        vals = tuple(str(a) for a in atoms)
        return [Cond(key, neg, vals, f"{key} {'!=' if neg else '=='} {','.join(vals)}")]
    if key == "fibtype":
        vals = tuple(str(a) for a in atoms)
        return [Cond("local", neg, vals, f"fib daddr type {'!= ' if neg else ''}{','.join(vals)}")]
    return [Cond(key, neg, tuple(atoms), text)]


def _ports_text(ports: tuple[tuple[int, int], ...]) -> str:
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ports)


def _proto_name(v: Any) -> str:
    if isinstance(v, int):
        for k, n in PROTO_NUMBERS.items():
            if n == v:
                return k
        return str(v)
    return str(v)


def _lookup_keys(key: Any) -> tuple[str, ...]:
    parts = key["concat"] if isinstance(key, dict) and "concat" in key else [key]
    out = []
    for p in parts:
        k = _key_of(p) or "unknown"
        out.append(k.split(":")[0])
    return tuple(out)


def _rule(
    family: str, table: str, chain: str, r: dict[str, Any], texts: dict[tuple[str, str, str, int], str]
) -> Rule:
    handle = int(r.get("handle", 0))
    text = texts.get((family, table, chain, handle), "")
    conds: list[Cond] = []
    verdict, target = "continue", None
    to_addr: IPAddress | None = None
    to_port: int | None = None
    to_family: int | None = None
    lookup: MapLookup | None = None
    for e in r.get("expr", []):
        if not isinstance(e, dict):
            continue
        if "match" in e:
            conds.extend(_cond(e["match"]))
        elif "xt" in e:
            xt = e["xt"]
            if xt.get("type") == "target" and xt.get("name") in ("DNAT", "REDIRECT"):
                verdict = "dnat"
                m = _DNAT_TEXT.search(text)
                if m:
                    to_addr = ipaddress.ip_address(m.group(1).strip("[]"))
                    to_port = int(m.group(2)) if m.group(2) else None
                    to_family = to_addr.version
                m2 = _REDIRECT_TEXT.search(text)
                if m2:
                    to_port = int(m2.group(1))
            elif xt.get("type") == "target":
                verdict = "xt:" + str(xt.get("name"))
            else:
                conds.append(
                    Cond("unknown", False, (f"xt {xt.get('name')}",), text=f"xt match {xt.get('name')}")
                )
        elif "jump" in e or "goto" in e:
            verdict = "jump" if "jump" in e else "goto"
            target = str(e[verdict]["target"])
        elif "return" in e:
            verdict = "return"
        elif "accept" in e:
            verdict = "accept"
        elif "drop" in e:
            verdict = "drop"
        elif "reject" in e:
            verdict = "reject"
        elif "vmap" in e:
            verdict = "vmap"
            data = str(e["vmap"].get("data", ""))
            lookup = MapLookup(data.lstrip("@"), _lookup_keys(e["vmap"].get("key")))
        elif "dnat" in e or "redirect" in e:
            verdict = "dnat"
            d = e.get("dnat") or e.get("redirect") or {}
            fam = d.get("family")
            to_family = 4 if fam == "ip" else 6 if fam == "ip6" else None
            addr = d.get("addr")
            if isinstance(addr, dict) and "map" in addr:
                m = addr["map"]
                lookup = MapLookup(str(m.get("data", "")).lstrip("@"), _lookup_keys(m.get("key")))
            elif isinstance(addr, str):
                to_addr = ipaddress.ip_address(addr)
                to_family = to_addr.version
            port = d.get("port")
            if isinstance(port, int):
                to_port = port
    comment = r.get("comment")
    return Rule(
        family,
        table,
        chain,
        handle,
        tuple(conds),
        verdict,
        target,
        to_addr,
        to_port,
        to_family,
        lookup,
        str(comment) if comment else None,
        _clean_text(text),
    )


def _clean_text(text: str) -> str:
    text = re.sub(r"\s*# handle \d+\s*$", "", text)
    text = re.sub(r"\bcounter packets \d+ bytes \d+\s*", "", text)
    return " ".join(text.split())


def _elem_component(v: Any) -> Any:
    if isinstance(v, dict):
        if "prefix" in v:
            return ("prefix", _net(v))
        if "range" in v:
            lo, hi = v["range"]
            return ("range", lo, hi)
        if "set" in v:
            return ("set", list(v["set"]))
    return v


def _map(m: dict[str, Any]) -> NftMap:
    ktypes = m.get("type")
    key_types = tuple(ktypes) if isinstance(ktypes, list) else tuple(str(ktypes).split(" . "))
    value_types = tuple(str(m.get("map", "")).split(" . "))
    elems = []
    for pair in m.get("elem", []) or []:
        if not isinstance(pair, list) or len(pair) != 2:
            continue
        k, v = pair
        comment = None
        if isinstance(k, dict) and "elem" in k:
            comment = k["elem"].get("comment")
            k = k["elem"].get("val")
        parts = k["concat"] if isinstance(k, dict) and "concat" in k else [k]
        key = tuple(_elem_component(p) for p in parts)
        if isinstance(v, dict) and ("jump" in v or "goto" in v):
            verb = "jump" if "jump" in v else "goto"
            value: tuple[Any, ...] = (verb, str(v[verb]["target"]))
        else:
            value = tuple(v["concat"]) if isinstance(v, dict) and "concat" in v else (v,)
        elems.append(Element(key, value, str(comment) if comment else None))
    return NftMap(str(m["family"]), str(m["table"]), str(m["name"]), key_types, value_types, tuple(elems))


def parse_text_handles(text: str) -> dict[tuple[str, str, str, int], str]:
    """(family, table, chain, handle) -> rule line, from ``nft -a list ruleset``."""
    out: dict[tuple[str, str, str, int], str] = {}
    fam = table = chain = ""
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"table (\w+) (\S+) \{", s)
        if m:
            fam, table, chain = m.group(1), m.group(2), ""
            continue
        m = re.match(r"chain (\S+) \{", s)
        if m:
            chain = m.group(1)
            continue
        m = re.search(r"# handle (\d+)$", s)
        if m and chain and not s.startswith(("type ", "chain ", "map ", "set ")):
            out[(fam, table, chain, int(m.group(1)))] = s
    return out


def parse_ruleset(data: dict[str, Any] | str, text: str = "") -> Ruleset:
    """Build a Ruleset from ``nft -j list ruleset`` (dict or JSON text) and optional ``nft -a`` text."""
    if isinstance(data, str):
        data = json.loads(data) if data.strip() else {"nftables": []}
    texts = parse_text_handles(text)
    rs = Ruleset()
    chains: dict[tuple[str, str, str], dict[str, Any]] = {}
    rules: dict[tuple[str, str, str], list[Rule]] = {}
    for item in data.get("nftables", []):
        if "table" in item:
            rs.tables.append((item["table"]["family"], item["table"]["name"]))
        elif "chain" in item:
            c = item["chain"]
            chains[(c["family"], c["table"], c["name"])] = c
        elif "rule" in item:
            r = item["rule"]
            key = (r["family"], r["table"], r["chain"])
            rules.setdefault(key, []).append(_rule(r["family"], r["table"], r["chain"], r, texts))
        elif "map" in item:
            m = _map(item["map"])
            rs.maps[(m.family, m.table, m.name)] = m
        elif "set" in item:
            st = item["set"]
            raw = [
                e["elem"].get("val") if isinstance(e, dict) and "elem" in e else e
                for e in st.get("elem") or []
            ]
            elems = tuple(str(e) for e in raw if isinstance(e, str | int))
            rs.sets[(str(st["family"]), str(st["table"]), str(st["name"]))] = elems
    for key, c in chains.items():
        prio = c.get("prio", 0)
        rs.chains[key] = Chain(
            c["family"],
            c["table"],
            c["name"],
            c.get("hook"),
            c.get("type"),
            int(prio) if isinstance(prio, int) else 0,
            c.get("policy"),
            tuple(rules.get(key, ())),
        )
    return rs


def read_ruleset() -> Ruleset:
    """The live ruleset of this network namespace (needs root)."""
    j = runner.run(["nft", "-j", "list", "ruleset"], timeout=READ_TIMEOUT)
    if j.returncode != 0:
        if "Operation not permitted" in j.stderr:
            raise NeedRoot("reading the nftables ruleset (nft list ruleset)")
        raise KernelError("nft -j list ruleset", j.stderr or f"exit {j.returncode}")
    t = runner.run(["nft", "-a", "list", "ruleset"], timeout=READ_TIMEOUT)
    rs = parse_ruleset(j.stdout, t.stdout if t.returncode == 0 else "")
    for family, tool in (("ip", "iptables-save"), ("ip6", "ip6tables-save")):
        if (family, "filter") in rs.tables and runner.available(tool):
            save = runner.run([tool, "-t", "filter"], timeout=READ_TIMEOUT)
            if save.returncode == 0:
                resolve_conntrack(rs, family, save.stdout)
    return rs


_CTSTATE = re.compile(r"-m conntrack (!\s+)?--ctstate (\S+)")


def resolve_conntrack(rs: Ruleset, family: str, save_text: str) -> None:
    """Give iptables-nft's ``xt match conntrack`` (opaque in nft's JSON) its states, from the
    ``iptables-save`` text: the n-th ``-A CHAIN`` line is the n-th rule of ``family filter CHAIN``
    (ufw's ``--ctstate RELATED,ESTABLISHED -j ACCEPT`` must not read as accepting new flows)."""
    lines: dict[str, list[str]] = {}
    for line in save_text.splitlines():
        if line.startswith("-A "):
            lines.setdefault(line.split()[1], []).append(line)
    for (fam, table, name), ch in list(rs.chains.items()):
        saved = lines.get(name, [])
        if fam != family or table != "filter" or len(saved) != len(ch.rules):
            continue  # not iptables' chain, or it changed between the two reads: leave it unknown
        rules = []
        for r, line in zip(ch.rules, saved, strict=True):
            m = _CTSTATE.search(line)
            if m and any(c.values == ("xt conntrack",) for c in r.conds):
                states = tuple(x.lower() for x in m.group(2).split(","))
                conds = tuple(
                    Cond("ctstate", bool(m.group(1)), states, f"ct state {m.group(2).lower()}")
                    if c.values == ("xt conntrack",)
                    else c
                    for c in r.conds
                )
                r = dataclasses.replace(r, conds=conds)
            rules.append(r)
        rs.chains[(fam, table, name)] = dataclasses.replace(ch, rules=tuple(rules))


# ---------------------------------------------------------------- the walk
@dataclass(frozen=True, slots=True)
class Packet:
    hook: str  # prerouting (from another machine) | output (from this host)
    proto: str
    daddr: IPAddress
    dport: int
    iif: str = ""  # "" for locally generated packets
    local: bool = True  # is daddr an address of this host (fib daddr type local)?


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where the ruleset sends a packet: dnat to an address, dropped, or nowhere (untouched)."""

    kind: str  # dnat | drop | none
    rule: Rule | None = None
    to_addr: IPAddress | None = None
    to_port: int | None = None
    owner: str | None = None  # comment of the rule or map element that decided it
    trace: tuple[str, ...] = ()
    assumed: tuple[str, ...] = ()


def _cond_true(c: Cond, p: Packet) -> bool | None:
    if c.key == "unknown":
        return None
    if c.key == "daddr":
        hit = any(p.daddr.version == n.version and p.daddr in n for n in c.values)
        fam_ok = any(p.daddr.version == n.version for n in c.values)
        if not fam_ok:  # an ip daddr match in an inet chain does not match the other family
            return False
        return hit != c.neg
    if c.key == "saddr":
        return None
    if c.key == "l4proto":
        return (p.proto in c.values) != c.neg
    if c.key == "dport":
        hit = any(lo <= p.dport <= hi for lo, hi in c.values)
        return hit != c.neg
    if c.key == "iifname":
        hit = any(_ifmatch(v, p.iif) for v in c.values)
        return hit != c.neg
    if c.key == "oifname":
        return None
    if c.key == "local":
        hit = p.local and "local" in c.values
        return hit != c.neg
    if c.key == "nfproto":
        fam = "ipv4" if p.daddr.version == 4 else "ipv6"
        return (fam in c.values) != c.neg
    return None


def _ifmatch(pattern: str, name: str) -> bool:
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return pattern == name


def _component_match(comp: Any, key: str, p: Packet) -> bool:
    val: Any = {"l4proto": p.proto, "daddr": p.daddr, "dport": p.dport, "iifname": p.iif}.get(key)
    if val is None:
        return False
    if isinstance(comp, tuple) and comp and comp[0] == "prefix":
        return (
            isinstance(val, ipaddress.IPv4Address | ipaddress.IPv6Address)
            and comp[1] is not None
            and val.version == comp[1].version
            and val in comp[1]
        )
    if isinstance(comp, tuple) and comp and comp[0] == "range":
        lo, hi = comp[1], comp[2]
        if key == "dport":
            return int(lo) <= p.dport <= int(hi)
        if isinstance(val, ipaddress.IPv4Address | ipaddress.IPv6Address):
            a, b = ipaddress.ip_address(lo), ipaddress.ip_address(hi)
            return a.version == val.version and a <= val <= b  # type: ignore[operator]
        return False
    if isinstance(comp, tuple) and comp and comp[0] == "set":
        return any(_component_match(x, key, p) for x in comp[1])
    if key == "dport":
        r = _port_range(comp)
        return r is not None and r[0] <= p.dport <= r[1]
    if key == "l4proto":
        return _proto_name(comp) == p.proto
    if key == "daddr":
        try:
            return ipaddress.ip_address(str(comp)) == p.daddr
        except ValueError:
            return False
    return str(comp) == str(val)


def map_lookup(m: NftMap, keys: tuple[str, ...], p: Packet) -> Element | None:
    for el in m.elements:
        if len(el.key) != len(keys):
            continue
        if all(_component_match(c, k, p) for c, k in zip(el.key, keys, strict=True)):
            return el
    return None


@dataclass
class _Walk:
    rs: Ruleset
    p: Packet
    trace: list[str] = field(default_factory=list)
    assumed: list[str] = field(default_factory=list)
    depth: int = 0


def _matches(w: _Walk, r: Any) -> bool:
    """Do the rule's conditions hold for the packet? One that cannot be decided is assumed true
    and noted."""
    for c in r.conds:
        t = _cond_true(c, w.p)
        if t is None:
            w.assumed.append(f"{r.where}: {c.describe()}")
        elif not t:
            return False
    return True


def _walk_chain(w: _Walk, ch: Chain) -> Outcome | None:
    """Evaluate one chain; an Outcome ends the hook (dnat/drop), "accept" ends this base chain.

    Returns None when the chain falls through (or returns)."""
    if w.depth > 32:
        return None
    for r in ch.rules:
        if not _matches(w, r):
            continue
        line = f"{r.where}: {r.text or r.verdict}"
        if r.verdict in ("jump", "goto") and r.target:
            sub = w.rs.chain(r.family, r.table, r.target)
            if sub is None:
                continue
            w.trace.append(line)
            w.depth += 1
            out = _walk_chain(w, sub)
            w.depth -= 1
            if out is not None:
                return out
            if r.verdict == "goto":
                return None
            continue
        if r.verdict == "vmap" and r.lookup:
            m = w.rs.maps.get((r.family, r.table, r.lookup.name))
            el = map_lookup(m, r.lookup.keys, w.p) if m else None
            if el is None or el.value[0] not in ("jump", "goto"):
                continue
            sub = w.rs.chain(r.family, r.table, str(el.value[1]))
            if sub is None:
                continue
            w.trace.append(
                f"{line} -> {el.value[0]} {el.value[1]}" + (f" ({el.comment})" if el.comment else "")
            )
            w.depth += 1
            out = _walk_chain(w, sub)
            w.depth -= 1
            if out is not None:
                return out
            continue
        if r.verdict == "return":
            return None
        if r.verdict == "accept":
            w.trace.append(line)
            return Outcome("accept", r, trace=tuple(w.trace), assumed=tuple(w.assumed))
        if r.verdict in ("drop", "reject"):
            w.trace.append(line)
            return Outcome("drop", r, owner=r.comment, trace=tuple(w.trace), assumed=tuple(w.assumed))
        if r.verdict == "dnat":
            if r.to_family is not None and r.to_family != w.p.daddr.version:
                continue  # "dnat ip to" in an inet chain does nothing to IPv6 packets, and vice versa
            if r.lookup:
                m = w.rs.maps.get((r.family, r.table, r.lookup.name))
                el = map_lookup(m, r.lookup.keys, w.p) if m else None
                if el is None:
                    continue  # a map miss: the rule does nothing for this packet
                addr = ipaddress.ip_address(str(el.value[0]))
                port = int(el.value[1]) if len(el.value) > 1 else None
                w.trace.append(line + (f" [{el.comment}]" if el.comment else ""))
                return Outcome(
                    "dnat",
                    r,
                    addr,
                    port or w.p.dport,
                    el.comment or r.comment,
                    tuple(w.trace),
                    tuple(w.assumed),
                )
            w.trace.append(line)
            return Outcome(
                "dnat", r, r.to_addr, r.to_port or w.p.dport, r.comment, tuple(w.trace), tuple(w.assumed)
            )
    return None


def walk(rs: Ruleset, p: Packet) -> Outcome:
    """Follow p through every base chain of its hook up to and including DNAT.

    A drop in a chain that runs before the nat stage (raw, mangle, an early filter chain) wins.
    """
    for ch in rs.base_chains(p.hook, p.daddr.version):
        if (
            ch.type == "nat"
            or ch.prio < NAT_DST_PRIORITY
            or (ch.type == "filter" and ch.prio <= NAT_DST_PRIORITY)
        ):
            w = _Walk(rs, p)
            w.trace.append(f"{ch.family} {ch.table} {ch.name} (hook {ch.hook}, prio {ch.prio})")
            out = _walk_chain(w, ch)
            if out is None or out.kind == "accept":
                if ch.policy == "drop" and out is None:
                    return Outcome("drop", None, trace=tuple(w.trace) + (f"policy drop of {ch.name}",))
                continue
            if out.kind == "drop" and ch.type == "nat":
                continue  # nat chains are not where drops are meant to happen; ignore odd setups
            return out
    return Outcome("none")


# ---------------------------------------------------------------- static listing of DNAT publications
@dataclass(frozen=True, slots=True)
class NatEntry:
    """One DNAT publication found in the ruleset (a rule, or one element of a DNAT map)."""

    hook: str
    family: int | None  # 4, 6, or None (an inet rule for both)
    proto: str | None
    daddrs: tuple[IPNet, ...]  # () = any local address
    daddr_neg: bool
    ports: tuple[tuple[int, int], ...]
    to_addr: IPAddress | None
    to_port: int | None
    owner: str | None
    iif: tuple[tuple[bool, str], ...]  # (negated, name) restrictions met on the way
    rule: Rule

    def covers_port(self, port: int) -> bool:
        return not self.ports or any(lo <= port <= hi for lo, hi in self.ports)


def _entry_from(rule: Rule, hook: str, conds: list[Cond], el: Element | None) -> NatEntry:
    proto = None
    daddrs: list[IPNet] = []
    neg = False
    ports: list[tuple[int, int]] = []
    iif: list[tuple[bool, str]] = []
    for c in conds:
        if c.key == "l4proto" and not c.neg and len(c.values) == 1:
            proto = str(c.values[0])
        elif c.key == "daddr":
            daddrs, neg = list(c.values), c.neg
        elif c.key == "dport" and not c.neg:
            ports = list(c.values)
        elif c.key == "iifname":
            iif.extend((c.neg, str(v)) for v in c.values)
    to_addr, to_port = rule.to_addr, rule.to_port
    owner = rule.comment
    fam = rule.to_family or (4 if rule.family == "ip" else 6 if rule.family == "ip6" else None)
    if el is not None and rule.lookup:
        owner = el.comment or owner
        for comp, key in zip(el.key, rule.lookup.keys, strict=False):
            if key == "l4proto":
                proto = _proto_name(comp)
            elif key == "daddr":
                if isinstance(comp, tuple) and comp[0] == "prefix" and comp[1] is not None:
                    daddrs = [comp[1]]
                else:
                    daddrs = [ipaddress.ip_network(str(comp))]
                neg = False
            elif key == "dport":
                r = (
                    _port_range(comp)
                    if not (isinstance(comp, tuple) and comp[0] == "range")
                    else (int(comp[1]), int(comp[2]))
                )
                if r:
                    ports = [r]
        to_addr = ipaddress.ip_address(str(el.value[0]))
        to_port = int(el.value[1]) if len(el.value) > 1 else None
        fam = to_addr.version
    if daddrs and all(d.prefixlen == 0 for d in daddrs) and not neg:
        daddrs = []  # 0.0.0.0/0 is "any"
    return NatEntry(
        hook, fam, proto, tuple(daddrs), neg, tuple(ports), to_addr, to_port, owner, tuple(iif), rule
    )


def nat_entries(rs: Ruleset) -> list[NatEntry]:
    """Every DNAT reachable from a nat base chain on prerouting or output, with its conditions."""
    out: list[NatEntry] = []
    seen: set[tuple[str, int, int | None]] = set()

    def visit(ch: Chain, hook: str, acc: list[Cond], depth: int) -> None:
        if depth > 16:
            return
        for r in ch.rules:
            conds = acc + list(r.conds)
            if r.verdict in ("jump", "goto") and r.target:
                sub = rs.chain(r.family, r.table, r.target)
                if sub:
                    visit(sub, hook, conds, depth + 1)
            elif r.verdict == "vmap" and r.lookup:
                m = rs.maps.get((r.family, r.table, r.lookup.name))
                for el in m.elements if m else ():
                    if el.value and el.value[0] in ("jump", "goto"):
                        sub = rs.chain(r.family, r.table, str(el.value[1]))
                        if sub:
                            visit(sub, hook, conds, depth + 1)
            elif r.verdict == "dnat":
                if r.lookup:
                    m = rs.maps.get((r.family, r.table, r.lookup.name))
                    for i, el in enumerate(m.elements if m else ()):
                        ekey: tuple[str, int, int | None] = (hook, id(r), i)
                        if ekey not in seen:
                            seen.add(ekey)
                            out.append(_entry_from(r, hook, conds, el))
                else:
                    rkey: tuple[str, int, int | None] = (hook, id(r), None)
                    if rkey not in seen:
                        seen.add(rkey)
                        out.append(_entry_from(r, hook, conds, None))

    for hook in ("prerouting", "output"):
        for ch in rs.base_chains(hook, None, "nat"):
            visit(ch, hook, [], 0)
    return out


def input_filter(rs: Ruleset) -> tuple[bool, list[Rule]]:
    """Does the host filter its INPUT? (any input-hook filter chain with policy drop or drop rules)."""
    policy_drop = False
    drops: list[Rule] = []
    for ch in rs.base_chains("input", None, "filter"):
        if ch.policy == "drop":
            policy_drop = True
        stack, seen = [ch], set()
        while stack:
            c = stack.pop()
            if (c.family, c.table, c.name) in seen:
                continue
            seen.add((c.family, c.table, c.name))
            for r in c.rules:
                if r.verdict in ("drop", "reject"):
                    drops.append(r)
                elif r.verdict in ("jump", "goto") and r.target:
                    sub = rs.chain(r.family, r.table, r.target)
                    if sub:
                        stack.append(sub)
    return policy_drop, drops
