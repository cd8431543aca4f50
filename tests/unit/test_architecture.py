"""The code's shape, read with ``ast`` (nothing is imported or run): no import circles between
modules or between subpackages, a pure core that touches no kernel, subprocess in few modules,
short functions, and most tests runnable without root. DESIGN.md says why each matters."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "portwright"
TESTS = Path(__file__).resolve().parents[1]
#: Pure: no I/O, no kernel. Unit-tested with golden data.
PURE_CORE = (
    "portwright.spec",
    "portwright.model",
    "portwright.ipam",
    "portwright.errors",
    "portwright.owners",
    "portwright.firewall.rules",
    "portwright.firewall.verified",
)
IMPURE_STDLIB = {"subprocess", "socket", "ctypes", "fcntl", "select", "sqlite3", "threading", "os", "signal"}
IMPURE_OURS = (
    "portwright.kernel",
    "portwright.firewall.nft",
    "portwright.state",
    "portwright.engine",
    "portwright.supervisor",
    "portwright.proxy",
)
#: The command runner, the bench's process driver, and the two places that start long-lived
#: processes (CMD, the fork server).
SUBPROCESS_LIMIT = 4
MAX_FUNCTION_LINES = 80
MIN_ROOTLESS_SHARE = 0.70


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


MODS = _modules()


def _type_checking_lines(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            for c in n.body:
                skip |= {s.lineno for s in ast.walk(c) if hasattr(s, "lineno")}
    return skip


def _targets(mod: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = mod.split(".")
    if MODS[mod].name != "__init__.py":
        base = base[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    subs = [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in MODS]
    return subs or [prefix]


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between our modules, external top-level imports) — TYPE_CHECKING imports excluded."""
    edges: dict[str, set[str]] = collections.defaultdict(set)
    external: dict[str, set[str]] = collections.defaultdict(set)
    for mod, path in MODS.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        for n in ast.walk(tree):
            if isinstance(n, ast.Import | ast.ImportFrom) and n.lineno not in skip:
                for t in _targets(mod, n):
                    if t in MODS and t != mod:
                        edges[mod].add(t)
                    elif not t.startswith("portwright"):
                        external[mod].add(t.split(".")[0])
    return edges, external


EDGES, EXTERNAL = _graph()


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(set(edges) | {t for ts in edges.values() for t in ts}):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _part(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_between_modules() -> None:
    assert _cycles(EDGES) == []


def test_no_import_circle_between_subpackages() -> None:
    parts: dict[str, set[str]] = collections.defaultdict(set)
    for a, bs in EDGES.items():
        for b in bs:
            if _part(a) != _part(b) and "portwright" not in (_part(a), _part(b)):
                parts[_part(a)].add(_part(b))
    assert _cycles(parts) == []


@pytest.mark.parametrize("mod", PURE_CORE)
def test_the_pure_core_touches_no_kernel(mod: str) -> None:
    assert mod in MODS
    assert EXTERNAL[mod] & IMPURE_STDLIB == set()
    assert [t for t in EDGES[mod] if t.startswith(IMPURE_OURS)] == []


def test_subprocess_is_imported_in_few_modules() -> None:
    users = sorted(m for m in MODS if "subprocess" in EXTERNAL[m])
    assert len(users) <= SUBPROCESS_LIMIT, users


def test_no_function_is_long() -> None:
    long = []
    for path in MODS.values():
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (n.end_lineno or n.lineno) - n.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{n.lineno} {n.name} ({length} lines)")
    assert long == []


def test_most_tests_run_without_root() -> None:
    total = rootful = 0
    for f in TESTS.rglob("test_*.py"):
        n = sum(
            1
            for x in ast.walk(ast.parse(f.read_text()))
            if isinstance(x, ast.FunctionDef | ast.AsyncFunctionDef) and x.name.startswith("test")
        )
        total += n
        rootful += n if "integration" in f.parts else 0
    assert total and (total - rootful) / total >= MIN_ROOTLESS_SHARE, (total, rootful)
