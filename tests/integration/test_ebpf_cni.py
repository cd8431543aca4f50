"""portwright-cni publishes through the connect-time rewrite too (issue 11): with
``reserveHostPort: false`` (as Podman needs) there is no holder and no relay, yet ``[::1]`` and
``localhost`` reach an IPv4-only container, connected to it in the kernel; DEL leaves no pin."""

from __future__ import annotations

import os
import socket

import pytest
from pwutil import curl, free_port, wait_tcp
from test_cni import Rig, new_rig

from conftest import sh
from portwright.cni.kernel import cni_rewrite_state
from portwright.kernel.bpf import probe
from portwright.publish import ebpf

pytestmark = pytest.mark.integration


def test_cni_loopback_v6_reaches_a_v4_container_without_a_relay() -> None:
    if not probe.connect_rewrite()[0]:
        pytest.skip(probe.connect_rewrite()[1])
    rig: Rig
    with new_rig() as rig:
        c = rig.new_container()
        wait_tcp(c.ns, "127.0.0.1", 80)  # busybox httpd is started, not waited for
        port = free_port()
        rc, res = rig.add(
            c, [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}], reserveHostPort=False
        )
        assert rc == 0, res
        hello = f"hello {c.cid[:12]}"
        for host in ("127.0.0.1", "[::1]", "localhost"):
            assert hello in curl(f"http://{host}:{port}/"), host
        with socket.socket(socket.AF_INET6) as s:
            s.settimeout(5)
            s.connect(("::1", port))
            assert s.getpeername()[:2] == ("::1", port)
            out = sh("ss", "-Htn", "state", "established", f"sport = :{s.getsockname()[1]}").stdout.split()
            assert out[-1] == f"[::ffff:{c.ip}]:80"
        pins = ebpf.RewriteSet(cni_rewrite_state()).dir
        assert os.path.isdir(pins)
        assert rig.pw("DEL", rig.pw_conf(None, []), c, netns="") == (0, None)
        assert not os.path.exists(pins)
