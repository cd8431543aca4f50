"""portwright-cni with ``"firewall": "host"`` (issue 16), in the real kernel: another machine reaches
the container through the holder's relay on the host port (no DNAT element for it), the host through
the 127.0.0.1 fast path, and DEL leaves nothing. (Whether the host firewall then decides is covered
for ``run --firewall host`` in test_hostfw.py, on the same relay.)"""

from __future__ import annotations

from pwutil import free_port
from test_cni import curl, entries, holders_of, new_rig

from conftest import External


def test_cni_firewall_host_relays_other_machines(external: External) -> None:
    with new_rig() as rig:
        c = rig.new_container()
        port = free_port()
        mappings = [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]
        rc, res = rig.add(c, mappings, firewall="host")
        assert rc == 0, res
        hello = f"hello {c.cid[:12]}"
        assert hello in curl(f"http://{external.host4}:{port}/", ns=external.ns)  # the relay
        assert hello in curl(f"http://127.0.0.1:{port}/")  # the fast path
        assert [e for e in entries(c.owner) if "->" in e] == [f"127.0.0.1:{port}->80/tcp"]
        assert len(holders_of(c.owner)) == 1
        conf = rig.pw_conf(c.prev, mappings, firewall="host")
        assert rig.pw("CHECK", conf, c) == (0, None)
        assert rig.pw("DEL", conf, c) == (0, None)
        assert entries(c.owner) == [] and holders_of(c.owner) == []
