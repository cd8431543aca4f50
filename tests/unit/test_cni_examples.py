"""The example conflists under examples/cni parse, chain portwright-cni last, and its config is valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portwright.cni import protocol as p

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "cni").glob("*.conflist"))
PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
    "ips": [{"interface": 0, "address": "198.18.88.2/24"}],
}


def test_three_runtimes_covered() -> None:
    assert {e.name for e in EXAMPLES} == {
        "podman.conflist",
        "containerd-kubernetes.conflist",
        "cnitool.conflist",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda e: e.name)
def test_example_is_valid(path: Path) -> None:
    conflist = json.loads(path.read_text())
    plugins = conflist["plugins"]
    assert plugins[0]["type"] == "bridge" and plugins[-1]["type"] == "portwright-cni"
    assert plugins[-1]["capabilities"] == {"portMappings": True}
    # What a runtime hands the plugin: the list's name and version merged into the plugin object.
    conf = {**plugins[-1], "name": conflist["name"], "cniVersion": conflist["cniVersion"], "prevResult": PREV}
    parsed = p.parse_config(json.dumps(conf), "ADD")
    assert parsed.reserve_host_port is (path.name != "podman.conflist")
