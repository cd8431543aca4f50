"""Issue 13's smaller items through the real CLI, in a namespace that plays the host: ``-p 0:80``
and ``-p 127.0.0.1:0:80`` get a free port each; SCTP on a kernel without it names ``modprobe sctp``."""

from __future__ import annotations

import json
import os
import secrets
import socket

import pytest
from hostns import host_namespace


def _has_sctp() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        return True
    except OSError:
        return False


def test_host_port_zero_takes_a_free_port() -> None:
    name = f"r13z{secrets.token_hex(3)}"
    try:
        with host_namespace() as h:
            h.pw("run", "-d", "--name", name, "-p", "0:80", "-p", "127.0.0.1:0:81", "--", "sleep", "300")
            doc = json.loads(h.pw("inspect", name).stdout)
            doc = doc[0] if isinstance(doc, list) else doc
            out = h.pw("port", name).stdout
            ports = [int(line.rsplit(":", 1)[1]) for line in out.splitlines() if "->" in line or ":" in line]
            assert ports and all(p > 0 for p in ports), out
            assert "127.0.0.1:" in out, out
            h.pw("rm", "-f", name)
    finally:
        path = f"/run/netns/pw-{name}"
        if os.path.exists(path) and not os.path.ismount(path):
            os.unlink(path)


@pytest.mark.skipif(_has_sctp(), reason="this kernel has SCTP: nothing to name")
def test_sctp_without_the_module_names_modprobe() -> None:
    with host_namespace() as h:
        p = h.pw("run", "--publish-mode", "nat", "-p", "127.0.0.1:18095:80/sctp", "--", "true", check=False)
        assert p.returncode != 0 and "Traceback" not in p.stderr
        errors = [line for line in p.stderr.strip().splitlines() if "18095" in line]
        assert len(errors) == 1 and "modprobe sctp" in errors[0], p.stderr
