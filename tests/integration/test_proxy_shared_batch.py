"""The shared relay hands new ports to its workers in batches (issue 15): a burst of
registrations (dockerd publishing a range) reaches every worker, a port whose waiter leaves before
its batch went out is freed at once and never reaches a worker, and connections to ports of the
burst are served by both processes."""

from __future__ import annotations

import os
import signal

import pytest
from proxynet import burst, echo_server, free_port, refused, wait_until
from test_proxy_shared import Lab, flags, lab  # noqa: F401 (fixture)

from portwright.proxy import shared


def test_a_burst_of_ports_reaches_every_worker(lab: Lab) -> None:  # noqa: F811
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the default is one process")
    with echo_server() as b:
        ports = [free_port() for _ in range(12)]
        for p in ports:
            _, st = lab.spawn(*flags("tcp", "127.0.0.1", p, b))
            assert st == b"0\n"
        # A waiter that leaves at once: its port may not have gone out to the workers yet.
        quick = free_port()
        w, st = lab.spawn(*flags("tcp", "127.0.0.1", quick, b))
        assert st == b"0\n"
        w.send_signal(signal.SIGTERM)
        assert w.wait(timeout=5) == 0
        assert wait_until(lambda: refused(quick), timeout=2)
        for target in (ports[0], ports[-1]):
            burst(target, b"q", threads=6, rounds=40)
        rows = {r["binding"]: r for r in shared.query(lab.dir)["ports"]}
        assert f"127.0.0.1:{quick}/tcp" not in rows
        for target in (ports[0], ports[-1]):
            row = rows[f"127.0.0.1:{target}/tcp"]
            assert row["counters"]["total"] == 240
            assert len(row["by_process"]) >= 2 and all(n > 0 for n in row["by_process"]), row
        assert refused(quick)  # no worker kept a copy of the port that left early
