"""Randomized stress of the TCP relay: many concurrent connections, random sizes and faults, every
byte checked against the stream that belongs to its own connection.

Each connection sends a header (its id, both lengths, the backend's fault), then its upload; the
backend sends the download. Both streams are a per-connection random block of a prime length
repeated, so a byte from another connection, a dropped or a repeated byte breaks the pattern at
its offset. Faults: client or backend reset (SO_LINGER 0) mid-stream, client or backend half-close
(send everything and SHUT_WR before reading anything), and a client that vanishes mid-download with
unread bytes (``close()``, what the kernel does for a killed process). Connections without a reset
must arrive byte-exact in both directions; a reset connection may be cut short but every byte it
delivered must still be its own. The seed is printed; ``PW_STRESS_SEED`` replays one.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass

import pytest
from loopproxy import abort, relay, tcp_backend, wait_until

PERIOD = 65521  # prime: a shifted stream never lines up with itself on 64 KiB boundaries
CHUNK = 1 << 18
HEADER = struct.Struct("!4sIQQ16sQ")
MAGIC = b"PWST"
SIZES = [0, 1, 100, 4095, 65536, 65537, 300_000, 1 << 20, 3 << 20, 5 << 20]
FAULTS = [
    "none",
    "none",
    "none",
    "client_halfclose",
    "backend_halfclose",
    "client_reset",
    "backend_reset",
    "client_vanish",
]
CONNECTIONS = 200
PARALLEL = 64
DEADLINE = 60.0  # per connection; a relay that stalls shows up as a "timeout" end


class Stream:
    """The bytes of one direction of one connection: offset -> expected bytes."""

    def __init__(self, seed: int) -> None:
        self.tile = random.Random(seed).randbytes(PERIOD) * (CHUNK // PERIOD + 2)

    def at(self, off: int, n: int) -> bytes:
        s = off % PERIOD
        return self.tile[s : s + n]


@dataclass(frozen=True)
class Plan:
    cid: int
    up: int
    down: int
    fault: str
    at: int  # byte offset where the fault fires

    def streams(self, seed: int) -> tuple[Stream, Stream]:
        return Stream(seed * 4 + self.cid * 2), Stream(seed * 4 + self.cid * 2 + 1)


@dataclass
class Side:
    received: int = 0
    intact: bool = True
    end: str = ""


def _plan(rng: random.Random, cid: int) -> Plan:
    up, down, fault = rng.choice(SIZES), rng.choice(SIZES), rng.choice(FAULTS)
    if fault in ("client_reset", "backend_reset") and up < 2:
        fault = "none"
    if fault == "client_vanish" and down < 2:
        fault = "none"
    at = rng.randrange(1, down if fault == "client_vanish" else max(up, 2))
    return Plan(cid, up, down, fault, at)


def _duplex(
    s: socket.socket,
    out: Stream,
    out_len: int,
    inp: Stream,
    *,
    send_first: bool = False,
    reset_after_send: int | None = None,
    reset_after_recv: int | None = None,
    vanish_after_recv: int | None = None,
) -> Side:
    """Send ``out_len`` bytes of ``out`` (then SHUT_WR) while checking what arrives against ``inp``."""
    side = Side()
    s.setblocking(False)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    sent = 0
    limit = out_len if reset_after_send is None else reset_after_send
    wr_done = rd_done = False
    deadline = time.monotonic() + DEADLINE
    with selectors.DefaultSelector() as sel:
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        try:
            while not (wr_done and rd_done):
                if not wr_done and sent >= limit:
                    if reset_after_send is not None:
                        side.end = "aborted"
                        abort(s)
                        return side
                    s.shutdown(socket.SHUT_WR)
                    wr_done = True
                mask = (0 if wr_done else selectors.EVENT_WRITE) | (
                    0 if rd_done or (send_first and not wr_done) else selectors.EVENT_READ
                )
                if not mask:
                    continue
                sel.modify(s, mask)
                if time.monotonic() > deadline:
                    side.end = "timeout"
                    return side
                for _key, ev in sel.select(1.0):
                    if ev & selectors.EVENT_WRITE and not wr_done:
                        sent += s.send(out.at(sent, min(CHUNK, limit - sent)))
                    if ev & selectors.EVENT_READ and not rd_done:
                        n = s.recv_into(buf)
                        if n == 0:
                            rd_done = True
                            side.end = "eof"
                            continue
                        if view[:n] != inp.at(side.received, n):
                            side.intact = False
                        side.received += n
                        if reset_after_recv is not None and side.received >= reset_after_recv:
                            side.end = "aborted"
                            abort(s)
                            return side
                        if vanish_after_recv is not None and side.received >= vanish_after_recv:
                            side.end = "vanished"
                            s.close()
                            return side
        except (ConnectionResetError, BrokenPipeError):
            side.end = "reset"
        except OSError as e:
            side.end = f"error {e}"
        finally:
            s.close()  # a no-op after abort() or a vanish
    return side


class StressBackend:
    """Accepts connections on a loopback listener, one thread each; records what each one got."""

    def __init__(self, ls: socket.socket, seed: int) -> None:
        self.ls = ls
        self.seed = seed
        self.results: dict[int, Side] = {}
        self.bad_headers: list[bytes] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.stopping = False
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        self.ls.settimeout(0.2)
        while not self.stopping:
            try:
                c, _ = self.ls.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, c: socket.socket) -> None:
        c.settimeout(DEADLINE)
        raw = b""
        try:
            while len(raw) < HEADER.size:
                chunk = c.recv(HEADER.size - len(raw))
                if not chunk:
                    break
                raw += chunk
        except OSError:
            pass
        if len(raw) < HEADER.size:  # a client that reset early: nothing to check
            c.close()
            return
        magic, cid, up, down, fault_b, at = HEADER.unpack(raw)
        if magic != MAGIC:
            with self.lock:
                self.bad_headers.append(raw)
            c.close()
            return
        fault = fault_b.rstrip(b"\0").decode()
        inp, out = Plan(cid, up, down, fault, at).streams(self.seed)
        side = _duplex(
            c,
            out,
            down,
            inp,
            send_first=fault == "backend_halfclose",
            reset_after_recv=at if fault == "backend_reset" else None,
        )
        with self.lock:
            self.results[cid] = side

    def stop(self) -> None:
        self.stopping = True
        self.acceptor.join()
        for t in self.threads:
            t.join(DEADLINE)


def _client(port: int, plan: Plan, seed: int) -> Side:
    out, inp = plan.streams(seed)
    s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    f = plan.fault
    try:
        s.sendall(HEADER.pack(MAGIC, plan.cid, plan.up, plan.down, f.encode(), plan.at))
    except OSError as e:
        s.close()
        return Side(end=f"header {e}")
    return _duplex(
        s,
        out,
        plan.up,
        inp,
        send_first=f == "client_halfclose",
        reset_after_send=plan.at if f == "client_reset" else None,
        vanish_after_recv=plan.at if f == "client_vanish" else None,
    )


def _problems(plans: list[Plan], clients: dict[int, Side], backend: StressBackend) -> list[str]:
    bad = [f"a backend read foreign bytes where a header belongs: {h!r}" for h in backend.bad_headers]
    for p in plans:
        c, b = clients[p.cid], backend.results.get(p.cid)
        if not c.intact:
            bad.append(f"{p}: the client got bytes that are not its own download ({c})")
        if b is not None and not b.intact:
            bad.append(f"{p}: the backend got bytes that are not this connection's upload ({b})")
        if p.fault in ("none", "client_halfclose", "backend_halfclose"):
            if (c.received, c.end) != (p.down, "eof"):
                bad.append(f"{p}: client got {c.received} bytes, end {c.end!r}")
            if b is None or (b.received, b.end) != (p.up, "eof"):
                bad.append(f"{p}: backend got {b}")
    return bad


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-worker-processes"])
def test_random_faults_never_mix_connections(workers: int) -> None:
    """With two worker processes (issue 15) the kernel spreads the connections over both loops;
    every byte is still checked, and the counters of both processes must add up to zero active."""
    seed = int(os.environ.get("PW_STRESS_SEED") or random.randrange(1 << 32))
    print(f"proxy stress seed {seed} workers {workers} (replay with PW_STRESS_SEED={seed})")
    rng = random.Random(seed)
    plans = [_plan(rng, i) for i in range(CONNECTIONS)]
    with tcp_backend() as ls, relay("tcp", ls.getsockname()[1], workers=workers) as (srv, port, key):
        backend = StressBackend(ls, seed)
        try:
            with concurrent.futures.ThreadPoolExecutor(PARALLEL) as ex:
                futs = {p.cid: ex.submit(_client, port, p, seed) for p in plans}
                clients = {cid: f.result() for cid, f in futs.items()}
        finally:
            backend.stop()
        assert wait_until(lambda: srv.stats()[key]["active"] == 0), f"seed {seed}: relays left {srv.stats()}"
        assert srv.stats()[key]["total"] == CONNECTIONS, srv.stats()
        if workers > 1:
            per = [w[key]["total"] for w in srv.worker_stats()]
            assert len(per) == workers and sum(per) == CONNECTIONS, per
    problems = _problems(plans, clients, backend)
    assert not problems, f"seed {seed}: " + "\n".join(problems[:20])
