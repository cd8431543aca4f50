"""Every CLI command imports the engine; the engine must not pull in the resolver's DNS library
(dnspython, about a second per command on a loaded machine, issue 14). Only the resolver process
and the bench import it."""

from __future__ import annotations

import subprocess
import sys

PROBE = (
    "import sys, portwright.cli, portwright.engine, portwright.zygote, portwright.dns.service; "
    "print(sorted(m for m in sys.modules if m == 'dns' or m.startswith('dns.')))"
)


def test_the_cli_and_engine_do_not_import_dnspython() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout[:300]
