"""nft's text syntax for the one kind of batch that grows with the number of ports: map elements.

Publishing 10,000 ports adds 20,000 map elements, and unpublishing deletes them. nft parses its
text syntax faster than the same batch in JSON (measured here, 20,000 elements in a throwaway
namespace: 0.43-0.45 s against 0.58-0.76 s for JSON, our own encoding included), and the text is
quicker to build. So a batch made only of ``add element`` / ``delete element`` commands on our
table, whose keys, values and comments are plain (addresses, protocol names, port numbers,
owner tags), is written as text; anything else (chains, rules, sets, or a value that is not
plain) returns None and goes as JSON, the one format the rest of the firewall code speaks.

Pure: it only renders; ``nft.run`` applies the text as one ``nft -f -`` transaction, as atomic as
the JSON one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from . import rules

# A word nft reads as itself in a concatenation: an IPv4/IPv6 address, a protocol name, a port.
_ATOM = re.compile(r"[0-9A-Za-z.:]{1,64}")
# An owner tag (``owners.nft_comment``): quoted as it is; no quote, backslash or newline.
_COMMENT = re.compile(r"[0-9A-Za-z:_.@/=+-]{1,128}")


def _atom(v: Any) -> str | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return str(v) if 0 <= v <= 65535 else None
    if isinstance(v, str) and _ATOM.fullmatch(v):
        return v
    return None


def _concat(v: Any) -> str | None:
    parts = v.get("concat") if isinstance(v, dict) and len(v) == 1 else None
    if not isinstance(parts, list) or not parts:
        return None
    atoms = [_atom(p) for p in parts]
    return None if any(a is None for a in atoms) else " . ".join(a for a in atoms if a is not None)


def _element(verb: str, e: Any) -> str | None:
    """One element of an ``add`` ([{"elem": {"val": KEY, "comment": TAG}}, VALUE]) or a
    ``delete`` (KEY) command, as text; None when it is not plain."""
    if verb == "delete":
        return _concat(e)
    if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], dict) and set(e[0]) == {"elem"}):
        return None
    inner = e[0]["elem"]
    if not isinstance(inner, dict) or set(inner) != {"val", "comment"}:
        return None
    key, value, comment = _concat(inner["val"]), _concat(e[1]), inner["comment"]
    if key is None or value is None or not isinstance(comment, str) or not _COMMENT.fullmatch(comment):
        return None
    return f'{key} comment "{comment}" : {value}'


def elements_text(cmds: Sequence[dict[str, Any]]) -> str | None:
    """``cmds`` as nft text, when every one adds or deletes elements of one of our publish maps
    and every element is plain; else None."""
    lines: list[str] = []
    for cmd in cmds:
        if not isinstance(cmd, dict) or len(cmd) != 1:
            return None
        verb, body = next(iter(cmd.items()))
        obj = body.get("element") if verb in ("add", "delete") and isinstance(body, dict) else None
        if (
            not isinstance(obj, dict)
            or set(body) != {"element"}
            or obj.get("family") != rules.FAMILY
            or obj.get("table") != rules.TABLE
            or obj.get("name") not in rules.PUB_MAPS
            or set(obj) != {"family", "table", "name", "elem"}
            or not isinstance(obj.get("elem"), list)
            or not obj["elem"]
        ):
            return None
        elems = [_element(verb, e) for e in obj["elem"]]
        if any(e is None for e in elems):
            return None
        lines.append(
            f"{verb} element {rules.FAMILY} {rules.TABLE} {obj['name']} {{ {', '.join(map(str, elems))} }}"
        )
    return "\n".join(lines) + "\n" if lines else None
