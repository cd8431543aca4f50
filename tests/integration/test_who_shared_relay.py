"""``who PORT`` on a live shared relay (issue 15): the port's holder is the relay process, and
``who`` asks the relay (found by its command line's ``--dir``) which waiter and which container
endpoint the port serves."""

from __future__ import annotations

from proxynet import free_port
from test_proxy_shared import Lab, echo, echo_server, flags, lab  # noqa: F401 (fixture)

from portwright.diagnose.snapshot import DOCKER_PROXY, collect
from portwright.diagnose.who import render, who


def test_who_names_the_waiter_and_endpoint_of_a_relay_port(lab: Lab) -> None:  # noqa: F811
    with echo_server() as b:
        port = free_port()
        w, st = lab.spawn(*flags("tcp", "127.0.0.1", port, b))
        assert st == b"0\n"
        assert echo(port, b"hi") == b"hi|ok"
        rep = who(collect("test"), port)
        holders = [h for _ln, h in rep.holders]
        assert holders, rep.summary()
        h = holders[0]
        assert h.comm.startswith("pw-relay"), h
        assert h.kind == DOCKER_PROXY and h.waiter == w.pid, h
        assert h.proxy_to is not None and (str(h.proxy_to[0]), h.proxy_to[1]) == ("127.0.0.1", b)
        assert f"dockerd's waiter pid {w.pid}" in render(rep)
