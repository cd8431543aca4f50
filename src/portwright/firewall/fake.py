"""An in-memory nftables table for tests without root: ``FakeBackend`` implements ``backend.Backend``.

It interprets the libnftables JSON commands that ``rules`` generates (add/create/insert/delete/
flush of tables, chains, sets, maps, rules and elements), applies each batch atomically (on a
copy, swapped in only when every command succeeded), assigns handles, and dumps the table in the
shape ``nft -j list table inet portwright`` gives, so ``rules.published``, ``owners``,
``networks`` and ``conflicts`` read it unchanged. It refuses what the kernel refuses, checked
against nft 1.0.6 on Linux 6.x: an element key that is absent on delete or present with another
value on add, a missing table, chain, set or rule handle, a ``create`` of something that exists,
deleting a chain another rule jumps to or a set a rule looks up. Re-adding an existing element
with the same value is a no-op that keeps its first comment, as in the kernel.

``transactions`` records every committed batch, ``rejected`` every refused one, and ``calls``
the order of lock, read, apply and the conntrack and DOCKER-USER calls, which are recorded,
not executed. ``fail_next`` makes a coming ``apply`` raise KernelError, for rollback tests.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import ipaddress
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import KernelError, MissingTool, PortwrightError
from . import rules

Cmd = dict[str, Any]
Predicate = Callable[[list[Cmd]], bool]
WHAT = "nft -j -f -"  # the command a real failure names
FAKE_COOKIE = 1  # the one namespace of the in-memory table (generation() pairs it with the count)


class _Refused(Exception):
    def __init__(self, err: int, cmd: Cmd) -> None:
        super().__init__(f"Could not process rule: {os.strerror(err)}: {json.dumps(cmd)[:200]}")
        self.errno = err


def touches(kind: str, verb: str | None = None) -> Predicate:
    """A ``fail_next`` predicate: the batch has a command on ``kind`` (``element``, ``rule``,
    ``table``...), with ``verb`` (``add``, ``delete``...) if given."""

    def pred(cmds: list[Cmd]) -> bool:
        return any(
            kind in body
            for c in cmds
            for v, body in c.items()
            if isinstance(body, dict) and (verb is None or v == verb)
        )

    return pred


def _norm(value: Any) -> Any:
    """An element key or value as the kernel lists it (addresses in their canonical form)."""
    if isinstance(value, dict) and "concat" in value:
        return {"concat": [_norm(v) for v in value["concat"]]}
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return value
    return value


def _listed_expr(expr: Any) -> Any:
    """A rule's expressions as nft lists them: a NAT statement's ``type_flags`` is not listed back
    (nft 1.0.6), everything ``rules`` generates otherwise reads back as it was given."""
    if isinstance(expr, list):
        return [_listed_expr(e) for e in expr]
    if isinstance(expr, dict):
        return {k: _listed_expr(v) for k, v in expr.items() if not (k == "type_flags" and "addr" in expr)}
    return expr


def _key_id(key: Any) -> str:
    return json.dumps(_norm(key), sort_keys=True)


@dataclass
class _Failure:
    countdown: int | None  # the n-th apply from now fails
    pred: Predicate | None  # or the next apply whose commands satisfy it
    error: PortwrightError


class FakeBackend:
    """``backend.Backend`` in memory (see the module docstring)."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], dict[str, Any]] = {}
        self.transactions: list[list[Cmd]] = []  # committed batches, in order
        self.rejected: list[list[Cmd]] = []  # batches that changed nothing
        self.calls: list[str] = []  # "lock", "read", "apply", "unlock", "conntrack ...", "docker-user ..."
        self.conntrack_ports: list[tuple[str, tuple[int, ...]]] = []
        self.conntrack_addrs: list[tuple[str, ...]] = []
        self.docker_user: list[str] | None = None  # bridges of the last docker_user_sync
        self.conntrack_tool = True  # False: require_conntrack raises MissingTool
        self._failures: list[_Failure] = []
        self.waiting: set[int] = set()  # threads waiting for the table lock
        self._lock = threading.Lock()
        self._lock_holder: int | None = None
        self._table_handles = 0
        self.gen = 0  # committed batches: the ruleset generation (a test bumps it for a foreign commit)
        self.generation_known = True
        self.host_rules_counted = True  # False: as iptables-legacy, whose changes the generation misses

    # --- Backend --------------------------------------------------------------------------------

    def apply(self, cmds: list[Cmd]) -> int:
        self.calls.append("apply")
        batch = copy.deepcopy(cmds)
        injected = self._injected(batch)
        if injected is not None:
            self.rejected.append(batch)
            raise injected
        tables, handles = copy.deepcopy(self.tables), self._table_handles
        try:
            for cmd in batch:
                self._one(cmd)
        except _Refused as e:
            self.tables, self._table_handles = tables, handles
            self.rejected.append(batch)
            raise KernelError(WHAT, str(e), e.errno) from None
        self.transactions.append(batch)
        self.gen += 1
        return 1

    def generation(self) -> tuple[int, int] | None:
        """(1, the number of committed batches); ``generation_known`` False: None."""
        return (FAKE_COOKIE, self.gen) if self.generation_known else None

    def read(self) -> dict[str, Any]:
        self.calls.append("read")
        return self.dump(rules.FAMILY, rules.TABLE)

    def read_table(self, family: str, table: str) -> dict[str, Any]:
        self.calls.append(f"read {family} {table}")
        return self.dump(family, table)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        if self._lock_holder == threading.get_ident():
            raise RuntimeError(
                "the table lock is not re-entrant: a flock on the same file would deadlock here"
            )
        self.waiting.add(threading.get_ident())
        with self._lock:
            self.waiting.discard(threading.get_ident())
            self._lock_holder = threading.get_ident()
            self.calls.append("lock")
            try:
                yield
            finally:
                self.calls.append("unlock")
                self._lock_holder = None

    def require_conntrack(self) -> None:
        if not self.conntrack_tool:
            raise MissingTool("conntrack", "conntrack")

    def flush_conntrack_ports(self, proto: str, ports: Sequence[int]) -> None:
        self.calls.append(f"conntrack {proto} {','.join(map(str, ports))}")
        self.conntrack_ports.append((proto, tuple(ports)))

    def flush_conntrack_addrs(self, addrs: Sequence[str]) -> None:
        self.calls.append(f"conntrack addrs {','.join(addrs)}")
        self.conntrack_addrs.append(tuple(addrs))

    def docker_user_sync(self, bridges: list[str]) -> None:
        self.calls.append(f"docker-user {','.join(sorted(set(bridges)))}")
        self.docker_user = sorted(set(bridges))

    def host_rules_in_nftables(self) -> bool:
        return self.host_rules_counted

    # --- fault injection ----------------------------------------------------------------------------

    def fail_next(
        self,
        when: int | Predicate = 1,
        detail: str = "injected failure",
        error: PortwrightError | None = None,
    ) -> None:
        """Make a coming apply() raise and change nothing: the ``when``-th one from now (1: the
        next), or the next one whose command list satisfies ``when`` (see ``touches``). It raises
        ``error`` if given (a NeedRoot, a MissingTool), else KernelError with ``detail``. Each
        call arms one failure."""
        if isinstance(when, int) and when < 1:
            raise ValueError(f"fail_next({when}): count applies from 1 (the next one)")
        err = error if error is not None else KernelError(WHAT, detail)
        if isinstance(when, int):
            self._failures.append(_Failure(when, None, err))
        else:
            self._failures.append(_Failure(None, when, err))

    def _injected(self, cmds: list[Cmd]) -> PortwrightError | None:
        fired: PortwrightError | None = None
        for f in list(self._failures):
            hit = f.pred(cmds) if f.pred is not None else f.countdown == 1
            if f.countdown is not None:
                f.countdown -= 1
            if hit and fired is None:
                fired = f.error
                self._failures.remove(f)
        return fired

    # --- the table as nft lists it ------------------------------------------------------------------

    def dump(self, family: str, name: str) -> dict[str, Any]:
        """``nft -j list table FAMILY NAME``, parsed; ``{}`` when the table does not exist."""
        t = self.tables.get((family, name))
        if t is None:
            return {}
        out: list[dict[str, Any]] = [
            {"metainfo": {"version": "1.0.6", "release_name": "portwright fake", "json_schema_version": 1}},
            {"table": {"family": family, "name": name, "handle": t["handle"]}},
        ]
        for sname, s in t["sets"].items():
            body: dict[str, Any] = {
                "family": family,
                "name": sname,
                "table": name,
                "type": s["type"],
                "handle": s["handle"],
            }
            if s["kind"] == "map":
                body["map"] = s["map"]
            if s.get("flags"):
                body["flags"] = s["flags"]
            elems = [
                self._dump_elem(s["kind"], key, value, comment) for key, value, comment in s["elems"].values()
            ]
            if elems:
                body["elem"] = elems
            out.append({s["kind"]: body})
        for cname, c in t["chains"].items():
            body = {"family": family, "table": name, "name": cname, "handle": c["handle"], **c["attrs"]}
            out.append({"chain": body})
        for cname, c in t["chains"].items():
            for r in c["rules"]:
                rule = {"family": family, "table": name, "chain": cname, "handle": r["handle"]}
                if r.get("comment") is not None:
                    rule["comment"] = r["comment"]
                rule["expr"] = r["expr"]
                out.append({"rule": rule})
        return copy.deepcopy({"nftables": out})

    @staticmethod
    def _dump_elem(kind: str, key: Any, value: Any, comment: str | None) -> Any:
        k = {"elem": {"val": key, "comment": comment}} if comment is not None else key
        return [k, value] if kind == "map" else k

    # --- interpreting one command ---------------------------------------------------------------------

    def _one(self, cmd: Cmd) -> None:
        if "metainfo" in cmd:
            return
        if not isinstance(cmd, dict) or len(cmd) != 1:
            raise _Refused(errno.EINVAL, cmd)
        verb, what = next(iter(cmd.items()))
        if not isinstance(what, dict) or len(what) != 1:
            raise _Refused(errno.EINVAL, cmd)
        kind, body = next(iter(what.items()))
        handler = getattr(self, f"_{verb}_{kind}", None)
        if handler is None:
            raise _Refused(errno.EOPNOTSUPP, cmd)
        handler(body, cmd)

    def _table(self, body: dict[str, Any], cmd: Cmd, key: str = "table") -> dict[str, Any]:
        t = self.tables.get((body.get("family", ""), body.get(key, "")))
        if t is None:
            raise _Refused(errno.ENOENT, cmd)
        return t

    @staticmethod
    def _next_handle(t: dict[str, Any]) -> int:
        t["next"] += 1
        return int(t["next"])

    # tables
    def _add_table(self, body: dict[str, Any], cmd: Cmd, create: bool = False) -> None:
        ident = (body.get("family", ""), body.get("name", ""))
        if ident in self.tables:
            if create:
                raise _Refused(errno.EEXIST, cmd)
            return
        self._table_handles += 1
        self.tables[ident] = {"handle": self._table_handles, "next": 0, "chains": {}, "sets": {}}

    def _create_table(self, body: dict[str, Any], cmd: Cmd) -> None:
        self._add_table(body, cmd, create=True)

    def _delete_table(self, body: dict[str, Any], cmd: Cmd) -> None:
        self._table(body, cmd, "name")
        del self.tables[(body["family"], body["name"])]

    def _flush_table(self, body: dict[str, Any], cmd: Cmd) -> None:
        for c in self._table(body, cmd, "name")["chains"].values():
            c["rules"].clear()

    # chains
    def _add_chain(self, body: dict[str, Any], cmd: Cmd, create: bool = False) -> None:
        t = self._table(body, cmd)
        if body["name"] in t["chains"]:
            if create:
                raise _Refused(errno.EEXIST, cmd)
            return
        attrs = {k: body[k] for k in ("type", "hook", "prio", "policy") if k in body}
        t["chains"][body["name"]] = {"handle": self._next_handle(t), "attrs": attrs, "rules": []}

    def _create_chain(self, body: dict[str, Any], cmd: Cmd) -> None:
        self._add_chain(body, cmd, create=True)

    def _chain(self, body: dict[str, Any], cmd: Cmd, key: str = "chain") -> dict[str, Any]:
        c: dict[str, Any] | None = self._table(body, cmd)["chains"].get(body.get(key))
        if c is None:
            raise _Refused(errno.ENOENT, cmd)
        return c

    def _delete_chain(self, body: dict[str, Any], cmd: Cmd) -> None:
        t = self._table(body, cmd)
        self._chain(body, cmd, "name")
        for other, c in t["chains"].items():
            if other != body["name"] and any(self._jumps_to(r["expr"], body["name"]) for r in c["rules"]):
                raise _Refused(errno.EBUSY, cmd)
        del t["chains"][body["name"]]

    @staticmethod
    def _jumps_to(expr: Any, chain: str) -> bool:
        text = json.dumps(expr)
        return any(f'"{verb}": {{"target": {json.dumps(chain)}}}' in text for verb in ("jump", "goto"))

    def _flush_chain(self, body: dict[str, Any], cmd: Cmd) -> None:
        self._chain(body, cmd, "name")["rules"].clear()

    # sets and maps
    def _add_set(self, body: dict[str, Any], cmd: Cmd, kind: str = "set", create: bool = False) -> None:
        t = self._table(body, cmd)
        if body["name"] in t["sets"]:
            if create or t["sets"][body["name"]]["kind"] != kind:
                raise _Refused(errno.EEXIST, cmd)
            return
        s: dict[str, Any] = {"kind": kind, "handle": self._next_handle(t), "type": body["type"], "elems": {}}
        if kind == "map":
            s["map"] = " . ".join(body["map"]) if isinstance(body["map"], list) else body["map"]
        if body.get("flags"):
            s["flags"] = body["flags"]
        t["sets"][body["name"]] = s

    def _create_set(self, body: dict[str, Any], cmd: Cmd) -> None:
        self._add_set(body, cmd, create=True)

    def _add_map(self, body: dict[str, Any], cmd: Cmd) -> None:
        self._add_set(body, cmd, "map")

    def _create_map(self, body: dict[str, Any], cmd: Cmd) -> None:
        self._add_set(body, cmd, "map", create=True)

    def _set(self, body: dict[str, Any], cmd: Cmd, kind: str | None = None) -> dict[str, Any]:
        s: dict[str, Any] | None = self._table(body, cmd)["sets"].get(body.get("name"))
        if s is None or (kind is not None and s["kind"] != kind):
            raise _Refused(errno.ENOENT, cmd)
        return s

    def _delete_set(self, body: dict[str, Any], cmd: Cmd, kind: str = "set") -> None:
        t = self._table(body, cmd)
        self._set(body, cmd, kind)
        ref = json.dumps("@" + body["name"])
        if any(ref in json.dumps(r["expr"]) for c in t["chains"].values() for r in c["rules"]):
            raise _Refused(errno.EBUSY, cmd)
        del t["sets"][body["name"]]

    def _delete_map(self, body: dict[str, Any], cmd: Cmd) -> None:
        self._delete_set(body, cmd, "map")

    def _flush_set(self, body: dict[str, Any], cmd: Cmd) -> None:
        self._set(body, cmd, "set")["elems"].clear()

    def _flush_map(self, body: dict[str, Any], cmd: Cmd) -> None:
        self._set(body, cmd, "map")["elems"].clear()

    # elements
    def _add_element(self, body: dict[str, Any], cmd: Cmd, create: bool = False) -> None:
        s = self._set(body, cmd)
        for raw in body.get("elem", []):
            if s["kind"] == "map":
                if not isinstance(raw, list) or len(raw) != 2:
                    raise _Refused(errno.EINVAL, cmd)  # a map element needs "key : value"
                spec, value = raw[0], _norm(raw[1])
            else:
                spec, value = raw, None
            key, comment = spec, None
            if isinstance(spec, dict) and "elem" in spec:
                key, comment = spec["elem"].get("val"), spec["elem"].get("comment")
            ident = _key_id(key)
            have = s["elems"].get(ident)
            if have is not None:
                if create or have[1] != value:
                    raise _Refused(errno.EEXIST, cmd)
                continue  # the kernel keeps the element as it was, first comment included
            s["elems"][ident] = (_norm(key), value, comment)

    def _create_element(self, body: dict[str, Any], cmd: Cmd) -> None:
        self._add_element(body, cmd, create=True)

    def _delete_element(self, body: dict[str, Any], cmd: Cmd) -> None:
        s = self._set(body, cmd)
        for raw in body.get("elem", []):
            key = raw[0] if s["kind"] == "map" and isinstance(raw, list) else raw  # [key, value] is accepted
            if isinstance(key, dict) and "elem" in key:
                key = key["elem"].get("val")
            if s["elems"].pop(_key_id(key), None) is None:
                raise _Refused(errno.ENOENT, cmd)

    # rules
    def _add_rule(self, body: dict[str, Any], cmd: Cmd, insert: bool = False) -> None:
        t = self._table(body, cmd)
        chain_rules: list[dict[str, Any]] = self._chain(body, cmd)["rules"]
        pos = len(chain_rules) if not insert else 0
        if "handle" in body:  # add: after that rule; insert: before it
            pos = self._rule_index(chain_rules, body["handle"], cmd) + (0 if insert else 1)
        rule = {
            "handle": self._next_handle(t),
            "comment": body.get("comment"),
            "expr": _listed_expr(body.get("expr", [])),
        }
        chain_rules.insert(pos, rule)

    def _insert_rule(self, body: dict[str, Any], cmd: Cmd) -> None:
        self._add_rule(body, cmd, insert=True)

    def _replace_rule(self, body: dict[str, Any], cmd: Cmd) -> None:
        chain_rules: list[dict[str, Any]] = self._chain(body, cmd)["rules"]
        r = chain_rules[self._rule_index(chain_rules, body.get("handle"), cmd)]
        r["comment"], r["expr"] = body.get("comment"), _listed_expr(body.get("expr", []))

    def _delete_rule(self, body: dict[str, Any], cmd: Cmd) -> None:
        chain_rules: list[dict[str, Any]] = self._chain(body, cmd)["rules"]
        del chain_rules[self._rule_index(chain_rules, body.get("handle"), cmd)]

    @staticmethod
    def _rule_index(chain_rules: list[dict[str, Any]], handle: Any, cmd: Cmd) -> int:
        for i, r in enumerate(chain_rules):
            if r["handle"] == handle:
                return i
        raise _Refused(errno.ENOENT, cmd)
