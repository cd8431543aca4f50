"""Data integrity through a published port: many concurrent connections, both directions at
once, sizes from a few bytes (the proxy's recv/send path) to megabytes (its splice path), every
byte checked. Runs through `portwright run --publish-mode proxy` and, as a control, nat."""

from __future__ import annotations

import concurrent.futures
import hashlib
import random
import socket
import struct
import sys
from collections.abc import Iterator

import pytest
from pwutil import SERVERS, inspect, pw, temp_network, uniq, wait_tcp

pytestmark = pytest.mark.integration
CPORT = 7100
SIZES = [0, 1, 17, 1000, 4096, 65535, 65536, 65537, 300_000, 2_000_000, 6_000_000]


@pytest.fixture(scope="module")
def network() -> Iterator[str]:
    with temp_network(prefix="integ") as name:
        yield name


def one(port: int, up: int, down: int, seed: int) -> None:
    payload = random.Random(seed ^ 0x5A5A).randbytes(up)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(struct.pack("!QQQ", up, down, seed))
        # Send and receive at once: both directions are in flight together.
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(c.sendall, payload)
            got = bytearray()
            while len(got) < down + 32:
                chunk = c.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
            fut.result()
    assert len(got) == down + 32, f"short read: {len(got)} of {down + 32} (up={up})"
    assert bytes(got[:down]) == random.Random(seed).randbytes(down), (
        f"server->client stream corrupted (down={down})"
    )
    assert bytes(got[down:]) == hashlib.sha256(payload).digest(), f"client->server stream corrupted (up={up})"


@pytest.mark.parametrize("mode", ["proxy", "nat"])
def test_every_byte_arrives_in_order(network: str, mode: str) -> None:
    name = uniq(mode)
    pw(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "--publish-mode",
        mode,
        "-p",
        f"127.0.0.1::{CPORT}",
        "--",
        sys.executable,
        str(SERVERS / "integrity_server.py"),
        str(CPORT),
    )
    try:
        info = inspect(name)
        wait_tcp(None, info["NetworkSettings"]["IPAddress"], CPORT)
        port = info["NetworkSettings"]["Mappings"][0]["HostPort"]
        rng = random.Random(1234)
        jobs = [(rng.choice(SIZES), rng.choice(SIZES), rng.randrange(1 << 62)) for _ in range(120)]
        with concurrent.futures.ThreadPoolExecutor(24) as ex:
            for f in [ex.submit(one, port, up, down, seed) for up, down, seed in jobs]:
                f.result()
    finally:
        pw("rm", "-f", name)
