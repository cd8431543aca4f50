"""Go ``text/template`` paths over JSON-shaped data, for ``--format``/``-f`` as Docker has them.

No well-kept Python library evaluates Go templates, so this is a small evaluator of the part
that Docker users type: literal text; ``{{.A.B}}``, ``{{.}}``, ``{{$}}``, ``{{$v.X}}``,
``{{(index .X 0).Y}}``; pipelines with ``|``; ``range`` (lists, and maps in sorted key order,
with ``$k, $v :=``), ``if``/``else if``/``else``, ``with``, ``end``; ``{{- -}}`` trimming and
``{{/* comments */}}``; Docker's functions ``json``, ``join``, ``split``, ``lower``, ``upper``,
``title``, ``truncate``, ``pad``, ``println`` and Go's ``index``, ``len``, ``print``, ``printf``,
``eq``, ``ne``, ``lt``, ``le``, ``gt``, ``ge``, ``and``, ``or``, ``not``.

Values print as Go prints them (``map[k:v]``, ``[a b]``, ``true``, ``<nil>``). A field that is
not there is an error naming it, as with Docker's structs (``index`` of a missing map key gives
``<no value>``, as Go's does). Pure: ``render(template, data) -> str``; errors are
``TemplateError`` (a ``ValueError``) with one line saying what and where.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

NO_VALUE = "<no value>"  # what Go prints for a missing map entry


class TemplateError(ValueError):
    """A template that does not parse or cannot be executed on the data."""


# ---------------------------------------------------------------------- lexing
# an action: {{ body }}, where "}}" inside a quoted or raw string does not close it
_ACTION = re.compile(r"""\{\{(-\s)?((?:[^`"}]|`[^`]*`|"(?:[^"\\]|\\.)*"|\}(?!\}))*?)(\s-)?\}\}""", re.S)
_TOKEN = re.compile(
    r"""(?P<ws>\s+)
    |(?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
    |(?P<dot>\.)
    |(?P<var>\$[A-Za-z0-9_]*)
    |(?P<str>"(?:[^"\\]|\\.)*")
    |(?P<raw>`[^`]*`)
    |(?P<char>'(?:[^'\\]|\\.)')
    |(?P<num>-?\d+(?:\.\d+)?)
    |(?P<decl>:=|=)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<punct>[()|,])""",
    re.X,
)


@dataclass(frozen=True, slots=True)
class Tok:
    kind: str
    text: str
    adjacent: bool  # no space before it: `.A` right after `)` or `$v` continues a chain


def lex_action(body: str) -> list[Tok]:
    toks: list[Tok] = []
    pos, space = 0, True
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if m is None:
            raise TemplateError(f"unexpected {body[pos]!r} in {{{{{body}}}}}")
        kind = m.lastgroup or ""
        if kind == "ws":
            space = True
        else:
            toks.append(Tok(kind, m.group(), not space))
            space = False
        pos = m.end()
    return toks


def split_template(src: str) -> Iterator[tuple[str, str]]:
    """("text", s) and ("action", body) pieces, with ``{{-`` and ``-}}`` trimming applied."""
    pos, pending_trim = 0, False
    for m in _ACTION.finditer(src):
        text = src[pos : m.start()]
        if pending_trim:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if text:
            yield "text", text
        body = m.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            yield "action", body
        pending_trim, pos = bool(m.group(3)), m.end()
    text = src[pos:]
    if "{{" in text:
        raise TemplateError("unclosed action: '{{' without '}}'")
    if pending_trim:
        text = text.lstrip()
    if text:
        yield "text", text


# ---------------------------------------------------------------------- parse tree
@dataclass(frozen=True, slots=True)
class Operand:
    kind: str  # field, dot, var, lit, func, pipe
    value: Any  # field: chain list; var: name; lit: the value; func: name; pipe: Pipeline
    chain: tuple[str, ...] = ()  # fields after a var, a parenthesized pipeline or a dot


@dataclass(frozen=True, slots=True)
class Pipeline:
    commands: tuple[tuple[Operand, ...], ...]
    decl: tuple[str, ...] = ()  # $x := ... or $k, $v := ... (range)


@dataclass(frozen=True, slots=True)
class Node:
    kind: str  # text, action, if, range, with
    text: str = ""
    pipe: Pipeline | None = None
    body: tuple[Node, ...] = ()
    orelse: tuple[Node, ...] = ()


class _TokStream:
    def __init__(self, toks: list[Tok], body: str) -> None:
        self.toks, self.i, self.body = toks, 0, body

    def peek(self) -> Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> Tok:
        t = self.peek()
        if t is None:
            raise TemplateError(f"unexpected end of {{{{{self.body}}}}}")
        self.i += 1
        return t


def _parse_pipeline(ts: _TokStream, end: str | None = None) -> Pipeline:
    decl = _parse_decl(ts)
    commands: list[tuple[Operand, ...]] = []
    cmd: list[Operand] = []
    while (t := ts.peek()) is not None and not (t.kind == "punct" and t.text == end):
        if t.kind == "punct" and t.text == "|":
            ts.take()
            if not cmd:
                raise TemplateError(f"missing command before '|' in {{{{{ts.body}}}}}")
            commands.append(tuple(cmd))
            cmd = []
            continue
        cmd.append(_parse_operand(ts))
    if not cmd:
        raise TemplateError(f"missing value in {{{{{ts.body}}}}}")
    commands.append(tuple(cmd))
    return Pipeline(tuple(commands), decl)


def _parse_decl(ts: _TokStream) -> tuple[str, ...]:
    """``$x :=`` or ``$k, $v :=`` in front of a pipeline (nothing consumed if absent)."""
    toks = ts.toks[ts.i :]
    if len(toks) >= 2 and toks[0].kind == "var" and toks[1].kind == "decl":
        ts.i += 2
        return (toks[0].text,)
    if len(toks) >= 4 and toks[0].kind == "var" and toks[1].text == "," and toks[2].kind == "var":
        if toks[3].kind == "decl":
            ts.i += 4
            return (toks[0].text, toks[2].text)
    return ()


def _unquote(t: Tok) -> Any:
    if t.kind == "str":
        return json.loads(t.text)
    if t.kind == "raw":
        return t.text[1:-1]
    if t.kind == "char":
        return ord(json.loads('"' + t.text[1:-1].replace('"', '\\"') + '"'))
    return float(t.text) if "." in t.text else int(t.text)


def _parse_operand(ts: _TokStream) -> Operand:
    t = ts.take()
    if t.kind == "field":
        return Operand("field", tuple(t.text[1:].split(".")))
    if t.kind in ("str", "raw", "char", "num"):
        return Operand("lit", _unquote(t))
    if t.kind == "ident":
        consts = {"true": True, "false": False, "nil": None}
        return Operand("lit", consts[t.text]) if t.text in consts else Operand("func", t.text)
    if t.kind == "punct" and t.text == "(":
        inner = _parse_pipeline(ts, end=")")
        ts.take()
        return Operand("pipe", inner, _chain(ts))
    if t.kind == "var":
        return Operand("var", t.text, _chain(ts))
    if t.kind == "dot":
        return Operand("dot", None)
    raise TemplateError(f"unexpected {t.text!r} in {{{{{ts.body}}}}}")


def _chain(ts: _TokStream) -> tuple[str, ...]:
    t = ts.peek()
    if t is not None and t.kind == "field" and t.adjacent:
        ts.take()
        return tuple(t.text[1:].split("."))
    return ()


_KEYWORDS = ("if", "range", "with", "else", "end", "define", "template", "block", "break", "continue")


def parse(src: str) -> tuple[Node, ...]:
    """The template's tree; raises TemplateError naming what is wrong."""
    pieces = list(split_template(src))
    nodes, stop, i = _parse_list(pieces, 0)
    if stop is not None:
        raise TemplateError(f"unexpected {{{{{stop}}}}}")
    assert i == len(pieces)
    return nodes


def _parse_list(pieces: list[tuple[str, str]], i: int) -> tuple[tuple[Node, ...], str | None, int]:
    """Nodes up to an ``else``/``end`` (returned as the stop word, with the index after it)."""
    out: list[Node] = []
    while i < len(pieces):
        kind, text = pieces[i]
        i += 1
        if kind == "text":
            out.append(Node("text", text))
            continue
        word = text.split(None, 1)[0] if text else ""
        if word in ("end", "else"):
            return tuple(out), text, i
        if word in ("if", "range", "with"):
            node, i = _parse_block(word, text[len(word) :].strip(), pieces, i)
            out.append(node)
        elif word in _KEYWORDS:
            raise TemplateError(f"{{{{{word}}}}} is not supported here")
        else:
            out.append(Node("action", pipe=_parse_pipeline(_TokStream(lex_action(text), text))))
    return tuple(out), None, i


def _parse_block(word: str, rest: str, pieces: list[tuple[str, str]], i: int) -> tuple[Node, int]:
    if not rest:
        raise TemplateError(f"missing value for {{{{{word}}}}}")
    pipe = _parse_pipeline(_TokStream(lex_action(rest), rest))
    body, stop, i = _parse_list(pieces, i)
    orelse: tuple[Node, ...] = ()
    if stop is None:
        raise TemplateError(f"{{{{{word} {rest}}}}} has no {{{{end}}}}")
    if stop != "end":
        tail = stop[len("else") :].strip()
        if tail.startswith("if ") and word == "if":  # else if: a nested if that shares our end
            node, i = _parse_block("if", tail[3:].strip(), pieces, i)
            return Node(word, pipe=pipe, body=body, orelse=(node,)), i
        if tail:
            raise TemplateError(f"unexpected {{{{{stop}}}}}")
        orelse, stop, i = _parse_list(pieces, i)
        if stop != "end":
            raise TemplateError(f"{{{{{word} {rest}}}}} has no {{{{end}}}}")
    return Node(word, pipe=pipe, body=body, orelse=orelse), i


# ---------------------------------------------------------------------- values
def go_str(v: Any) -> str:
    """A value as Go's fmt prints it with %v."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e21 else repr(v)
    if isinstance(v, dict):
        return "map[" + " ".join(f"{go_str(k)}:{go_str(v[k])}" for k in sorted(v, key=str)) + "]"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_str(x) for x in v) + "]"
    return str(v)


def truth(v: Any) -> bool:
    """Go's template truth: false, 0, nil and empty strings, lists and maps are false."""
    if isinstance(v, _Missing):
        return False
    return bool(v)


class _Missing:
    """Go's invalid value: a missing map entry; prints as ``<no value>``."""

    def __str__(self) -> str:
        return NO_VALUE


MISSING = _Missing()


def field(v: Any, name: str, where: str) -> Any:
    if isinstance(v, dict):
        if name in v:
            return v[name]
        extra = getattr(v, "fields", None)  # a map with fields beside its keys (cliformat.PortMap)
        if isinstance(extra, dict) and name in extra:
            return extra[name]
        known = ", ".join(sorted(str(k) for k in v)[:12])
        raise TemplateError(f"{where}: no field {name!r} (fields here: {known})")
    raise TemplateError(f"{where}: cannot take field {name!r} of {_kind(v)} {go_str(v)[:40]!r}")


def _kind(v: Any) -> str:
    return {dict: "map", list: "list", str: "string", bool: "bool"}.get(type(v), type(v).__name__)


# ---------------------------------------------------------------------- functions
def _json(v: Any) -> str:
    # Docker's json: encoding/json without HTML escaping, compact
    return json.dumps(None if v is MISSING else v, separators=(",", ":"), ensure_ascii=False)


def _index(v: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(v, dict):
            v = v.get(k, MISSING)
        elif isinstance(v, (list, tuple, str)) and isinstance(k, int) and not isinstance(k, bool):
            if not 0 <= k < len(v):
                raise TemplateError(f"index out of range: {k} (length {len(v)})")
            v = v[k]
        else:
            raise TemplateError(f"cannot index {_kind(v)} with {go_str(k)!r}")
    return v


def _len(v: Any) -> int:
    if isinstance(v, (dict, list, tuple, str)):
        return len(v)
    raise TemplateError(f"len of {_kind(v)} {go_str(v)!r}")


def _sprint(*args: Any) -> str:
    # Go's Sprint: a space between operands when neither side is a string
    out = ""
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out += " "
        out += _plain(a)
    return out


def _plain(v: Any) -> str:
    return v if isinstance(v, str) else str(v) if v is MISSING else go_str(v)


_VERB = re.compile(r"%([-+ 0#]*)(\d*)(?:\.(\d+))?([a-zA-Z%])")


def _printf(fmt: str, *args: Any) -> str:
    queue = list(args)

    def one(m: re.Match[str]) -> str:
        flags, width, prec, verb = m.groups()
        if verb == "%":
            return "%"
        if not queue:
            return f"%!{verb}(MISSING)"
        a = queue.pop(0)
        if verb in "sv":
            s = _plain(a)[: int(prec)] if prec else _plain(a)
        elif verb == "q":
            s = json.dumps(_plain(a), ensure_ascii=False)
        elif verb == "d" and isinstance(a, int):
            s = str(a)
        elif verb == "f" and isinstance(a, (int, float)):
            s = f"{a:.{int(prec) if prec else 6}f}"
        elif verb == "x":
            s = f"{a:x}" if isinstance(a, int) else _plain(a).encode().hex()
        elif verb == "t" and isinstance(a, bool):
            s = go_str(a)
        else:
            return f"%!{verb}({_kind(a)}={go_str(a)})"
        pad = int(width) if width else 0
        return s.ljust(pad) if "-" in flags else s.rjust(pad, "0" if "0" in flags and verb in "df" else " ")

    out = _VERB.sub(one, fmt)
    return out + "".join(f"%!(EXTRA {_kind(a)}={go_str(a)})" for a in queue)


def _cmp(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def f(a: Any, b: Any) -> bool:
        if isinstance(a, str) != isinstance(b, str):
            raise TemplateError(f"incompatible types for comparison: {go_str(a)!r} and {go_str(b)!r}")
        return op(a, b)

    return f


def _and(*args: Any) -> Any:
    for a in args:
        if not truth(a):
            return a
    return args[-1]


def _or(*args: Any) -> Any:
    for a in args:
        if truth(a):
            return a
    return args[-1]


def _pad(s: str, prefix: int, suffix: int) -> str:
    return " " * prefix + s + " " * suffix if s else s


FUNCS: dict[str, Callable[..., Any]] = {
    "json": _json,
    "index": _index,
    "len": _len,
    "join": lambda items, sep: sep.join(_plain(x) for x in items),
    "split": lambda s, sep: s.split(sep),
    "lower": lambda s: s.lower(),
    "upper": lambda s: s.upper(),
    "title": lambda s: re.sub(r"(^|\s)(\S)", lambda m: m.group(1) + m.group(2).upper(), s),
    "truncate": lambda s, n: s[:n],
    "pad": _pad,
    "print": _sprint,
    "println": lambda *a: " ".join(_plain(x) for x in a) + "\n",
    "printf": _printf,
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "lt": _cmp(lambda a, b: a < b),
    "le": _cmp(lambda a, b: a <= b),
    "gt": _cmp(lambda a, b: a > b),
    "ge": _cmp(lambda a, b: a >= b),
    "and": _and,
    "or": _or,
    "not": lambda a: not truth(a),
}


# ---------------------------------------------------------------------- execution
def render(src: str, data: Any) -> str:
    """``src`` executed with ``data`` as dot, as Go's text/template would; TemplateError if not."""
    out: list[str] = []
    _run(parse(src), data, {"$": data}, out)
    return "".join(out)


def _run(nodes: tuple[Node, ...], dot: Any, env: dict[str, Any], out: list[str]) -> None:
    for n in nodes:
        if n.kind == "text":
            out.append(n.text)
            continue
        assert n.pipe is not None
        if n.kind == "range":
            _range(n, dot, env, out)
            continue
        v = _pipeline(n.pipe, dot, env)
        if n.kind == "action":
            if not n.pipe.decl:
                out.append(_plain(v))
        elif n.kind == "if":
            _run(n.body if truth(v) else n.orelse, dot, dict(env), out)
        elif truth(v):  # with
            _run(n.body, v, dict(env), out)
        else:
            _run(n.orelse, dot, dict(env), out)


def _range(n: Node, dot: Any, env: dict[str, Any], out: list[str]) -> None:
    assert n.pipe is not None
    items = _pipeline(Pipeline(n.pipe.commands), dot, env)
    if isinstance(items, dict):
        pairs: list[tuple[Any, Any]] = [(k, items[k]) for k in sorted(items, key=str)]
    elif isinstance(items, (list, tuple)):
        pairs = list(enumerate(items))
    elif items is None or items is MISSING:
        pairs = []
    else:
        raise TemplateError(f"range can't iterate over {_kind(items)} {go_str(items)!r}")
    if not pairs:
        _run(n.orelse, dot, dict(env), out)
    for k, v in pairs:
        inner = dict(env)
        if len(n.pipe.decl) == 2:
            inner[n.pipe.decl[0]], inner[n.pipe.decl[1]] = k, v
        elif n.pipe.decl:
            inner[n.pipe.decl[0]] = v
        _run(n.body, v, inner, out)


def _pipeline(p: Pipeline, dot: Any, env: dict[str, Any]) -> Any:
    v: Any = None
    for i, cmd in enumerate(p.commands):
        v = _command(cmd, dot, env, (v,) if i else ())
    if p.decl:
        env[p.decl[-1]] = v
    return v


def _command(ops: tuple[Operand, ...], dot: Any, env: dict[str, Any], piped: tuple[Any, ...]) -> Any:
    head = ops[0]
    if head.kind == "func":
        fn = FUNCS.get(head.value)
        if fn is None:
            raise TemplateError(f'function "{head.value}" not defined (known: {", ".join(sorted(FUNCS))})')
        args = [_operand(o, dot, env) for o in ops[1:]] + list(piped)
        try:
            return fn(*args)
        except TemplateError:
            raise
        except (TypeError, ValueError, AttributeError) as e:
            raise TemplateError(f"error calling {head.value}: {e}") from None
    if len(ops) > 1 or piped:
        raise TemplateError(f"can't give an argument to a non-function {_describe(head)}")
    return _operand(head, dot, env)


def _operand(o: Operand, dot: Any, env: dict[str, Any]) -> Any:
    if o.kind == "field":
        return _walk(dot, o.value, "." + ".".join(o.value))
    if o.kind == "dot":
        return dot
    if o.kind == "lit":
        return o.value
    if o.kind == "func":
        return _command((o,), dot, env, ())
    if o.kind == "var":
        if o.value not in env:
            raise TemplateError(f"undefined variable: {o.value}")
        base = env[o.value]
    else:
        base = _pipeline(o.value, dot, env)
    return _walk(base, o.chain, _describe(o)) if o.chain else base


def _walk(v: Any, names: tuple[str, ...], where: str) -> Any:
    for name in names:
        v = field(v, name, where)
    return v


def _describe(o: Operand) -> str:
    if o.kind == "field":
        return "." + ".".join(o.value)
    if o.kind == "var":
        return str(o.value) + "".join("." + c for c in o.chain)
    return "(...)" + "".join("." + c for c in o.chain) if o.kind == "pipe" else repr(o.value)
