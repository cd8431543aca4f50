"""ebpf publishing under random faults (seeded; the seed is printed): sandboxes started
concurrently, removed, killed with -9, programs detached by someone else, stale entries left
behind. After every step the shared set must hold exactly the entries of the sandboxes that are
running, with every program attached while any is, and each running sandbox must be reached
straight (``ss`` shows it as the peer); at the end nothing is left."""

from __future__ import annotations

import ipaddress
import os
import random
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pwutil import inspect, pw, temp_network
from test_ebpf_publish import CPORT, Sandbox, ss_peer, start, svc_owners

from portwright.kernel.bpf.links import Link
from portwright.publish import ebpf
from portwright.publish import ebpf_progs as ep

pytestmark = pytest.mark.integration
STEPS = 10


def check(live: dict[str, Sandbox]) -> None:
    rw = ebpf.RewriteSet()
    assert svc_owners() == {ebpf.owner_hash(f"pw:{sb.id}") for sb in live.values()}
    if not live:
        assert not os.path.exists(rw.dir)
        return
    assert rw.missing_links() == []
    for sb in live.values():
        with socket.create_connection(("127.0.0.1", sb.port), timeout=5) as s:
            assert ss_peer("tcp", s.getsockname()[1]) == f"{sb.ip4}:{CPORT}"


def fault(rng: random.Random, net: str, live: dict[str, Sandbox]) -> str:
    action = rng.choice(["start2", "rm", "kill", "detach", "stale"] if live else ["start2"])
    if action == "start2":
        with ThreadPoolExecutor(2) as pool:
            for sb in pool.map(lambda _: start(net), range(2)):
                live[sb.name] = sb
    elif action == "rm":
        sb = live.pop(rng.choice(sorted(live)))
        pw("rm", "-f", sb.name)
    elif action == "kill":
        sb = live.pop(rng.choice(sorted(live)))
        os.kill(inspect(sb.name)["State"]["SupervisorPid"], signal.SIGKILL)
        time.sleep(0.3)
        pw("rm", "-f", sb.name)  # reconciles first, then forgets the exited record
    elif action == "detach":
        name = rng.choice([n for n, *_ in ep.PROGRAMS])
        with Link.open_pinned(os.path.join(ebpf.RewriteSet().dir, "link_" + name)) as link:
            link.detach()
        pw("ps")
    else:
        maps = ebpf.RewriteSet().open_maps()
        assert maps is not None
        with maps.svc as svc:
            key = ep.svc_key("udp", ipaddress.ip_address("127.0.0.1"), rng.randrange(1, 1024))
            svc.update(key, ep.svc_value(ipaddress.ip_address("198.18.9.9"), 1, 12345))
        maps.close()
        pw("ps")
    return action


def test_random_faults_keep_the_set_exact() -> None:
    seed = int(os.environ.get("PW_STRESS_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    live: dict[str, Sandbox] = {}
    with temp_network(prefix="ebs") as net:
        try:
            for step in range(STEPS):
                action = "?"
                try:
                    action = fault(rng, net, live)
                    check(live)
                except (AssertionError, OSError) as e:
                    raise AssertionError(f"seed {seed}, step {step} ({action}): {e}") from e
        finally:
            for sb in live.values():
                pw("rm", "-f", sb.name, check=False)
        check({})
