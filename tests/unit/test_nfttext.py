"""Element batches as nft text (firewall/nfttext.py): exactly what the JSON says, or nothing.
nft parses its text syntax faster than JSON, which matters at 20,000 elements (#11); anything
that is not a plain element of our publish maps must stay JSON."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from portwright.firewall import nfttext, rules
from portwright.model import ANY4, ANY6, Mapping

IP4 = ipaddress.IPv4Address("198.18.43.2")
IP6 = ipaddress.IPv6Address("2001:2:0:43::2")
MAPS = [
    Mapping("tcp", ANY4, 8080, IP4, 80),
    Mapping("tcp", ANY6, 8080, IP6, 80),
    Mapping("udp", ipaddress.IPv4Address("127.0.0.1"), 5353, IP4, 53),
    Mapping("tcp", ipaddress.IPv6Address("2001:2:0:43::1"), 8443, IP6, 443),
]


def test_a_publication_is_written_as_text_element_by_element() -> None:
    text = nfttext.elements_text(rules.publish_commands("pw:0123456789ab", MAPS))
    assert text == (
        'add element inet portwright pub4_addr { 127.0.0.1 . udp . 5353 comment "pw:0123456789ab" '
        ": 198.18.43.2 . 53 }\n"
        'add element inet portwright pub4_any { tcp . 8080 comment "pw:0123456789ab" : 198.18.43.2 . 80 }\n'
        "add element inet portwright pub6_addr { 2001:2:0:43::1 . tcp . 8443 "
        'comment "pw:0123456789ab" : 2001:2:0:43::2 . 443 }\n'
        'add element inet portwright pub6_any { tcp . 8080 comment "pw:0123456789ab" : 2001:2:0:43::2 . 80 }\n'
    )


def test_a_deletion_by_key_is_written_as_text() -> None:
    text = nfttext.elements_text(rules.delete_elements_commands(MAPS[:2]))
    assert text == (
        "delete element inet portwright pub4_any { tcp . 8080 }\n"
        "delete element inet portwright pub6_any { tcp . 8080 }\n"
    )


def _add(elem: list[Any], name: str = "pub4_any", **extra: Any) -> dict[str, Any]:
    return {
        "add": {"element": {"family": "inet", "table": "portwright", "name": name, "elem": elem, **extra}}
    }


def _elem(key: list[Any], value: list[Any], comment: Any = "pw:abc") -> list[Any]:
    return [{"elem": {"val": {"concat": key}, "comment": comment}}, {"concat": value}]


GOOD = _elem(["tcp", 80], ["198.18.43.2", 80])


@pytest.mark.parametrize(
    "cmds",
    [
        rules.base_commands(),  # chains, maps, rules: JSON only
        [_add([GOOD]), *rules.base_commands()[:1]],  # one non-element command spoils the batch
        [_add([GOOD], name="bridges")],  # not a publish map
        [{"add": {"element": {"family": "ip", "table": "portwright", "name": "pub4_any", "elem": [GOOD]}}}],
        [_add([GOOD], timeout=5)],  # an attribute the text does not carry
        [_add([])],
        [_add([_elem(["tcp", 80], ["198.18.43.2", 80], comment='pw:a" ; flush ruleset ; "')])],
        [_add([_elem(["tcp", 80], ["198.18.43.2", 80], comment=7)])],
        [_add([_elem(["tcp", -1], ["198.18.43.2", 80])])],
        [_add([_elem(["tcp", True], ["198.18.43.2", 80])])],
        [_add([_elem(["tcp }", 80], ["198.18.43.2", 80])])],
        [_add([[{"elem": {"val": {"concat": ["tcp", 80]}}}, {"concat": ["198.18.43.2", 80]}]])],  # no comment
        [
            {
                "delete": {
                    "element": {"family": "inet", "table": "portwright", "name": "pub4_any", "elem": ["tcp"]}
                }
            }
        ],
        [{"flush": {"map": {"family": "inet", "table": "portwright", "name": "pub4_any"}}}],
        [],
    ],
)
def test_anything_else_stays_json(cmds: list[dict[str, Any]]) -> None:
    assert nfttext.elements_text(cmds) is None
