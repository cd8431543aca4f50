"""The waiter's C source (proxy/waiter.py): paths are baked in as C strings, refused when they
could break out of the string; the build needs x86_64 and gcc. No root needed."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

import pytest

from portwright.errors import BadInput
from portwright.proxy import waiter


def test_render_bakes_in_the_paths_and_workers() -> None:
    src = waiter.render("/opt/venv/bin/python", "/run/pw-test/proxy", workers=3)
    assert '#define RELAY_SOCKET "/run/pw-test/proxy/relay.sock"' in src
    assert '#define RELAY_LOCK "/run/pw-test/proxy/spawn.lock"' in src
    assert '#define RELAY_PARENT "/run/pw-test"' in src
    assert '#define RELAY_PYTHON "/opt/venv/bin/python"' in src
    assert '"--workers", "3"' in src
    assert "@" not in src.replace("__asm__", "")  # every placeholder filled


@pytest.mark.parametrize("bad", ['/tmp/a"b', "/tmp/a\\b", "/tmp/a\nb", "/" + "x" * 120])
def test_render_refuses_paths_that_are_not_plain_c_strings(bad: str) -> None:
    with pytest.raises(BadInput, match="cannot be written into the waiter"):
        waiter.render(bad, "/run/x")
    with pytest.raises(BadInput):
        waiter.render("/usr/bin/python3", bad)


@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("gcc") is None, reason="x86_64 + gcc")
def test_built_waiter_is_tiny_static_and_reports_a_missing_relay(tmp_path: object) -> None:
    d = str(tmp_path)
    out = os.path.join(d, "portwright-proxy")
    size = waiter.build(out, python="/nonexistent/python", directory=os.path.join(d, "run"))
    assert size < 8192 and os.path.getsize(out) == size
    with open(out, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF" and head[16] == 2  # ET_EXEC: static, no interpreter
    # no relay can start (its python does not exist): after its retries the waiter says so on fd 3
    r, w = os.pipe()
    p = subprocess.Popen(
        [out, "-proto", "tcp", "-host-port", "1"], close_fds=False, preexec_fn=lambda: os.dup2(w, 3)
    )
    os.close(w)
    with os.fdopen(r, "rb") as f:
        status = f.read()
    assert p.wait(timeout=30) == 1
    assert status.startswith(b"1\nportwright-proxy: the shared relay did not answer"), status
