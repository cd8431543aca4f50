"""Port allocation and the Publisher interface.

Allocation turns parsed ``-p``/``-P`` requests into concrete Mappings and binds a socket for
each one while the state database is locked, so the kernel (a real bind) and our own records
agree and two concurrent ``run``s can never be handed the same host port. Before binding, a
port is checked against both owners we know of: the mappings recorded in state and the host's
sockets (sock_diag), with the one clash rule (``model.bindings_clash``); the exclusive bind
(``reserve``) then keeps it ours. The IPv4 and IPv6
halves of one request always get the same host port. A Publisher then makes the mappings
carry traffic (nat: nftables maps; proxy: the userland relay) and undoes it at teardown.
"""

from __future__ import annotations

import errno
import ipaddress
import resource
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import BadInput, Conflict, PortInUse, PortwrightError
from ..kernel import sockets as ksockets
from ..kernel import sysctl
from ..model import ANY4, ANY6, IPAddress, Mapping, Proto, address_text, bindings_clash
from ..spec import PortSpec
from .reserve import bind_socket


@dataclass(frozen=True, slots=True)
class Target:
    """Where published traffic goes: the sandbox's addresses."""

    ip4: ipaddress.IPv4Address | None
    ip6: ipaddress.IPv6Address | None


Bound = list[tuple[Mapping, socket.socket | None]]


class Publisher(Protocol):
    """One publishing mechanism, built by the registry for one sandbox (``registry.create``).

    ``publish`` does the kernel's part and takes ownership of the bound sockets (a mapping's socket
    is None when another mapping's dual-stack socket holds its port). What needs a userland relay
    is ``relays()``; ``serve`` starts that relay in the calling process, which is the one that
    stays alive for the sandbox (the supervisor), while ``publish`` may run in a short-lived
    builder. Nothing here raises during teardown."""

    name: str
    #: Allocation binds one dual-stack ``[::]:P`` socket for a wildcard request's two halves.
    dual_stack: bool
    #: This instance put elements in the firewall, and its unpublish removes them.
    in_kernel: bool

    def publish(self, bound: Bound) -> None: ...

    def relays(self) -> dict[Mapping, socket.socket]:
        """The bindings a userland relay must serve, with their sockets (after publish)."""
        ...

    def serve(self, relays: dict[Mapping, socket.socket] | None = None) -> None:
        """Start the userland relay here, for ``relays`` (default: this instance's own)."""
        ...

    def unpublish(self) -> list[str]:
        """Undo everything; return error descriptions instead of raising (teardown goes on)."""
        ...

    def describe(self) -> list[dict[str, str]]:
        """One entry per published binding: ``binding`` (host side) and ``path`` (how it is served)."""
        ...

    def check(self) -> list[str]:
        """What this publication needs in the kernel and is missing now (empty: all in place)."""
        ...

    def stats(self) -> dict[str, dict[str, int]]: ...


def host_ips(spec: PortSpec, target: Target, ipv6_host: bool) -> list[tuple[IPAddress, IPAddress]]:
    """(host address, container address) for each family half of one spec."""
    if spec.host_ip is not None:
        if spec.host_ip.version == 4:
            if target.ip4 is None:
                raise BadInput(f"-p {spec.text}: the sandbox has no IPv4 address")
            return [(spec.host_ip, target.ip4)]
        if not ipv6_host:
            raise BadInput(f"-p {spec.text}: IPv6 is disabled on this host; publish on an IPv4 address")
        dst6: IPAddress | None = target.ip6 or target.ip4
        assert dst6 is not None
        return [(spec.host_ip, dst6)]
    halves: list[tuple[IPAddress, IPAddress]] = []
    if target.ip4 is not None:
        halves.append((ANY4, target.ip4))
    if ipv6_host:
        dst = target.ip6 or target.ip4
        if dst is not None:
            halves.append((ANY6, dst))
    return halves


class _Holders:
    """Who already holds host ports, read once per allocation: the mappings recorded for other
    sandboxes (``known``) and the host's listening TCP / bound UDP sockets (sock_diag). A port
    either of them holds is refused before any bind, so even a socket that shares ports
    (SO_REUSEADDR on UDP, SO_REUSEPORT) cannot end up with a second owner."""

    def __init__(self, known: Sequence[tuple[str, Mapping]], protos: set[str]) -> None:
        # Indexed by (proto, port): a range or -P looks up thousands of ports among as many mappings.
        self.known: dict[tuple[str, int], list[tuple[str, Mapping]]] = {}
        for who, m in known:
            self.known.setdefault((m.proto, m.host_port), []).append((who, m))
        self.sockets: dict[tuple[str, int], list[ksockets.Listener]] = {}
        for ln in ksockets.listeners(tuple(sorted(protos & {"tcp", "udp"})), with_processes=False):
            self.sockets.setdefault((ln.proto, ln.port), []).append(ln)

    def owner(self, proto: str, ip: IPAddress, port: int, dual: bool) -> str | ksockets.Listener | None:
        """The first known owner (its description) or host socket that a bind of ip:port clashes with."""
        for who, m in self.known.get((proto, port), ()):
            if bindings_clash(m.host_ip, ip, b_dual=dual):
                return who
        for ln in self.sockets.get((proto, port), ()):
            if ln.clashes(proto, ip, port, dual):
                return ln
        return None

    def describe(self, proto: str, ip: IPAddress, port: int, dual: bool) -> str:
        """Who holds ip:port now, for the error message (names the process of a host socket)."""
        who = self.owner(proto, ip, port, dual)
        if isinstance(who, str):
            return who
        if who is not None:
            return ksockets.describe_listener(
                ksockets.with_processes([who], ksockets.socket_inodes_by_pid())[0]
            )
        return ksockets.describe_owner(proto, port, ip, dual)


def _first_holder(
    holders: _Holders, proto: Proto, halves: list[tuple[IPAddress, IPAddress]], port: int, dual: bool
) -> tuple[IPAddress, bool] | None:
    """The first half (host address, dual-stack?) of a request that someone already holds."""
    for hip, is_dual in _socket_halves(halves, dual):
        if holders.owner(proto, hip, port, is_dual) is not None:
            return hip, is_dual
    return None


def _socket_halves(halves: list[tuple[IPAddress, IPAddress]], dual: bool) -> list[tuple[IPAddress, bool]]:
    """The sockets a request binds: (host address, dual-stack?) per socket."""
    if dual and len(halves) == 2 and _is(halves[0][0], ANY4) and _is(halves[1][0], ANY6):
        return [(ANY6, True)]
    return [(h, False) for h, _ in halves]


def _is(ip: IPAddress, wildcard: IPAddress) -> bool:
    """``ip == wildcard``, by identity first: ``host_ips`` hands out the constants themselves,
    and an address comparison is Python code, asked twice per port of a 10,000-port range."""
    return ip is wildcard or ip == wildcard


def _try_bind(
    proto: Proto, halves: list[tuple[IPAddress, IPAddress]], port: int, dual: bool
) -> tuple[list[socket.socket | None], tuple[IPAddress, OSError] | None]:
    if dual and len(halves) == 2 and _is(halves[0][0], ANY4) and _is(halves[1][0], ANY6):
        # One dual-stack [::]:P socket holds the port in both families: half the descriptors,
        # so 10,000 published ports fit in a 20,000-descriptor limit.
        try:
            return [None, bind_socket(proto, ANY6, port, v6only=False)], None
        except OSError as e:
            return [], (ANY6, e)
    socks: list[socket.socket | None] = []
    for hip, _ in halves:
        try:
            socks.append(bind_socket(proto, hip, port))
        except OSError as e:
            for s in socks:
                if s is not None:
                    s.close()
            return [], (hip, e)
    return socks, None


def allocate(
    specs: Sequence[PortSpec],
    target: Target,
    known: Sequence[tuple[str, Mapping]],
    ipv6_host: bool | None = None,
    dual_stack: bool = False,
    prefer: dict[tuple[str, str, int], int] | None = None,
) -> Bound:
    """Bind a socket for every mapping the specs ask for. ``known`` lists (owner description,
    mapping) already published by others: a port one of them holds, or that a host socket holds
    (sock_diag), is refused (PortInUse naming the owner) or skipped in a range, before any bind.
    All-or-nothing. With dual_stack, a wildcard request's two halves share one ``[::]:P`` socket
    (kept on the v6 half; the v4 half's socket is None). ``prefer`` maps (proto, host address,
    container port) to the host port to try first (``start``: the port it had, if still free)."""
    if ipv6_host is None:
        ipv6_host = sysctl.ipv6_enabled()
    lo, hi = sysctl.local_port_range()
    reserved = sysctl.reserved_ports()
    holders = _Holders(known, {spec.proto for spec in specs})
    out: Bound = []
    taken_here: _Taken = {}
    avoid = set((prefer or {}).values())
    ephemeral: tuple[int, ...] | None = None  # built once: -P or -p 80 x many, 28,000 ports each
    try:
        for spec in specs:
            halves = host_ips(spec, target, ipv6_host)  # the same for each port of a spec
            sock_halves = _socket_halves(halves, dual_stack)
            for cport, candidates in spec.requests():
                if not candidates and ephemeral is None:
                    ephemeral = tuple(p for p in range(lo, hi + 1) if p not in reserved)
                pool = candidates or ephemeral or ()
                if avoid and len(pool) > 1:  # a port drawn again keeps off the others' old ports
                    pool = tuple(p for p in pool if p not in avoid) or pool
                args = (halves, dual_stack, holders, taken_here, len(out))
                want = (
                    prefer.get((spec.proto, address_text(halves[0][0]), cport)) if prefer and halves else None
                )
                if want is not None and not (
                    want in candidates if candidates else lo <= want <= hi and want not in reserved
                ):
                    want = None  # no longer a port this request may have
                got = _bind_preferred(spec, want, *args)
                port, socks = got or _bind_one(spec, halves, pool, not candidates, *args[1:])
                for (hip, cip), sock in zip(halves, socks, strict=True):
                    out.append((Mapping(spec.proto, hip, port, cip, cport), sock))
                for hip, is_dual in sock_halves:
                    taken_here.setdefault((spec.proto, port), []).append((spec.text, hip, is_dual))
    except BaseException:
        for _, sock in out:
            if sock is not None:
                sock.close()
        raise
    return out


def _bind_preferred(
    spec: PortSpec,
    want: int | None,
    halves: list[tuple[IPAddress, IPAddress]],
    dual: bool,
    holders: _Holders,
    taken_here: _Taken,
    n_bound: int,
) -> tuple[int, list[socket.socket | None]] | None:
    """The preferred host port ``want`` (``start``: the one it had) if it is still free; None
    (draw as usual, with the usual errors) when there is none or it is taken."""
    if want is None:
        return None
    try:
        return _bind_one(spec, halves, (want,), True, dual, holders, taken_here, n_bound)
    except PortwrightError:
        return None


# (proto, host port) -> (the -p text, host address, dual-stack?) of each socket this request bound
_Taken = dict[tuple[str, int], list[tuple[str, IPAddress, bool]]]


def _check_own_clash(
    spec: PortSpec, halves: list[tuple[IPAddress, IPAddress]], port: int, dual: bool, taken_here: _Taken
) -> None:
    """Refuse a port an earlier ``-p`` of the same request holds: the two flags clash (the holder
    the kernel would name is this very process)."""
    for text, hip0, dual0 in taken_here.get((spec.proto, port), ()):
        for hip, is_dual in _socket_halves(halves, dual):
            if bindings_clash(hip0, hip, a_dual=dual0, b_dual=is_dual):
                raise BadInput(
                    f"-p {text} and -p {spec.text} both ask for host port {port}/{spec.proto}; "
                    "give each its own host port"
                )


def _bind_one(
    spec: PortSpec,
    halves: list[tuple[IPAddress, IPAddress]],
    pool: Sequence[int],
    ephemeral: bool,
    dual: bool,
    holders: _Holders,
    taken_here: _Taken,
    n_bound: int,
) -> tuple[int, list[socket.socket | None]]:
    """The first port of pool that nobody holds and that binds: (port, a socket per half)."""
    last: tuple[IPAddress, bool, int] | None = None  # (host address, dual-stack?, port) last refused
    for port in pool:
        if (spec.proto, port) in taken_here:
            if ephemeral or len(pool) > 1:
                continue
            _check_own_clash(spec, halves, port, dual, taken_here)
        held = _first_holder(holders, spec.proto, halves, port, dual)
        if held is not None:
            last = (*held, port)
            continue
        socks, err = _try_bind(spec.proto, halves, port, dual)
        if err is None:
            return port, socks
        hip, e = err
        if e.errno in (errno.EMFILE, errno.ENFILE):
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            raise BadInput(
                f"-p {spec.text}: out of file descriptors after {n_bound} sockets "
                f"(RLIMIT_NOFILE hard limit {limit}); publish fewer ports in one "
                "sandbox or raise the limit (ulimit -Hn, LimitNOFILE=)"
            )
        if e.errno == errno.EADDRNOTAVAIL:
            raise BadInput(
                f"-p {spec.text}: {hip} is not an address of this host; "
                "use one of its addresses (see 'ip addr') or omit the IP"
            )
        if e.errno not in (errno.EADDRINUSE, errno.EACCES):
            raise BadInput(f"-p {spec.text}: cannot bind {hip} port {port}: {e.strerror}")
        last = (hip, _socket_halves(halves, dual) == [(ANY6, True)], port)
    if last is None:
        raise BadInput(f"-p {spec.text}: no host port left to try")
    hip, is_dual, port = last
    if len(pool) == 1:
        binding = f"[{hip}]:{port}" if hip.version == 6 else f"{hip}:{port}"
        raise PortInUse(f"{binding}/{spec.proto}", holders.describe(spec.proto, hip, port, is_dual))
    what = "ephemeral range" if ephemeral else "range"
    raise Conflict(
        f"-p {spec.text}: every host port of the {what} {pool[0]}-{pool[-1]} is "
        "already in use; widen the range or free a port"
    )
