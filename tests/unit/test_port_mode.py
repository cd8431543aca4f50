"""``portwright port`` shows the publish mode in effect (issue 11) without breaking Docker's format.

Scripts parse ``port NAME`` and ``port NAME 80/tcp`` exactly as Docker prints them, so the mode is
added only when stdout is a terminal; scripts ask for it with ``--format '{{.PublishMode}}'``, and
a template ranging over the port map still sees only Docker's keys.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
import os

import pytest

from portwright import cli
from portwright.errors import BadInput
from portwright.model import ANY4, ANY6, Mapping, Sandbox
from portwright.state import State

IP = ipaddress.IPv4Address("198.18.42.2")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def web(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PORTWRIGHT_STATE_DIR", str(tmp_path))
    st = State(str(tmp_path))
    sb = Sandbox(id="d" * 12, name="web", network="n1", netns=None, veth=None, ip4=IP, publish_mode="ebpf")
    st.insert_sandbox(sb, ["sleep", "1"], {"detach": True})
    st.set_ports(sb.id, [Mapping("tcp", ANY4, 8080, IP, 80), Mapping("tcp", ANY6, 8080, IP, 80)])
    return "web"


def _port(name: str, port: str | None = None, fmt: str | None = None, tty: bool = False) -> str:
    out = _Tty() if tty else io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.cmd_port(argparse.Namespace(name=name, port=port, format=fmt)) == 0
    return out.getvalue()


def test_piped_output_is_dockers_exact_format(web: str) -> None:
    assert _port(web) == "80/tcp -> 0.0.0.0:8080\n80/tcp -> [::]:8080\n"
    assert _port(web, "80/tcp") == "0.0.0.0:8080\n[::]:8080\n"


def test_a_terminal_sees_the_mode_after_each_line(web: str) -> None:
    assert _port(web, tty=True) == "80/tcp -> 0.0.0.0:8080   (ebpf)\n80/tcp -> [::]:8080   (ebpf)\n"
    assert _port(web, "80", tty=True) == "0.0.0.0:8080   (ebpf)\n[::]:8080   (ebpf)\n"


def test_format_reaches_the_mode_and_ranges_over_ports_only(web: str) -> None:
    assert _port(web, fmt="{{.PublishMode}}") == "ebpf\n"
    assert _port(web, fmt="{{range $p, $c := .}}{{$p}};{{end}}") == "80/tcp;\n"
    assert _port(web, fmt="{{json .}}") == (
        '{"80/tcp":[{"HostIp":"0.0.0.0","HostPort":"8080"},{"HostIp":"::","HostPort":"8080"}]}\n'
    )
    assert _port(web, fmt='{{(index (index . "80/tcp") 0).HostPort}}') == "8080\n"


def test_an_unknown_field_is_still_one_line_naming_it(web: str) -> None:
    with pytest.raises(BadInput, match="Nope"):
        _port(web, fmt="{{.Nope}}")
