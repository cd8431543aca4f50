"""host-remap: ``--network host`` with ``-p``. CMD shares the host's network namespace, so nothing
sits in the data path; BPF programs on CMD's own cgroup rewrite its ``bind()`` from INNER to HOST
(``hostremap_progs`` generates them) and confine it to the ports it was given.

The programs are attached with BPF links to the sandbox's cgroup (``kernel.cgroup``), never to
the root, so nothing else on the machine is affected. The links are pinned in bpffs under
``<pin dir of the state dir>/hostremap/<sandbox id>/``: they outlive the short-lived builder of a
detached sandbox, and ``cleanup`` (called by the engine's teardown, also after a kill -9 of the
supervisor) detaches and unpins them. Removing the cgroup alone would leave defunct pinned links.

**The reservation.** Allocation binds the host port as for every mode (so a clash is refused
naming its owner), and this publisher gives the socket back at the end of ``publish``, just
before CMD starts, because CMD's own rewritten ``bind()`` must take the port. Sharing it instead
(SO_REUSEPORT set on CMD's socket from the bind program) would let a UDP reservation steal half of
CMD's datagrams and change CMD's socket semantics. The port stays recorded in state, so no other
portwright sandbox can be given it; only a foreign process that binds it in the few milliseconds
before CMD does could take it (or, for a ``-P`` port, which lies in the ephemeral range, an
outgoing connection's automatic bind), and then CMD's bind fails loudly (EADDRINUSE) and ``who``
names the holder.
"""

from __future__ import annotations

import os
import socket

from ..errors import BadInput, KernelError
from ..kernel import cgroup, sysctl
from ..kernel.bpf import asm, fs, links, probe
from ..kernel.bpf import consts as c
from ..kernel.bpf.links import Link
from ..kernel.bpf.progs import Program
from ..kernel.bpf.syscall import BpfError
from ..model import Mapping
from ..owners import SANDBOX_PREFIX
from ..state import state_dir
from .base import Bound
from .hostremap_progs import IPPROTO, Confinement, plan
from .registry import PublishContext

#: The subdirectory of the state dir's bpffs pin directory that holds one directory per sandbox.
PIN_SUBDIR = "hostremap"
#: How ``describe``/``who`` say where the port is served.
PATH_TEXT = "host-remap: bound as :{inner}, remapped at bind() (cgroup BPF)"


def pin_path(owner: str, base: str | None = None) -> str:
    """The bpffs directory of one sandbox's links."""
    sid = owner.removeprefix(SANDBOX_PREFIX)
    return os.path.join(base or fs.pin_dir(state_dir()), PIN_SUBDIR, sid)


def unsupported_reason() -> str | None:
    """Why host-remap cannot work here (no cgroup2, bind programs refused), None when it can."""
    if cgroup.cgroup2_root() is None:
        return "no cgroup2 hierarchy is mounted"
    ok, why = probe.bind4()
    if not ok:
        return f"the kernel refuses cgroup BPF bind programs ({why})"
    if not os.path.isdir(fs.BPFFS):
        return f"no {fs.BPFFS} to pin BPF links in"
    return None


def cleanup(owner: str) -> list[str]:
    """Detach and unpin every link of ``owner``; problems as lines (teardown goes on)."""
    path = pin_path(owner)
    errors: list[str] = []
    if not os.path.isdir(path):
        return errors
    for name in sorted(os.listdir(path)):
        try:
            links.detach_pinned(os.path.join(path, name))
        except OSError as e:
            errors.append(f"bpf link {name}: {str(e).splitlines()[0]}")
    fs.remove_pins(path)
    for parent in (os.path.dirname(path), os.path.dirname(os.path.dirname(path)), fs.PIN_PARENT):
        try:
            os.rmdir(parent)  # hostremap/, the state dir's pin directory, portwright/: once empty
        except OSError:
            break
    return errors


def confinement(ctx: PublishContext) -> Confinement:
    """Port 0, the ephemeral range (net.ipv4.ip_local_port_range) and ``--expose``d TCP/UDP ports."""
    exposed = tuple(
        (IPPROTO[e.proto], e.ports.start, e.ports.end) for e in ctx.spec.expose if e.proto in IPPROTO
    )
    return Confinement(sysctl.local_port_range(), exposed)


class HostRemapPublisher:
    name = "host-remap"
    dual_stack = False  # CMD binds each family itself; the reservation is per mapping
    in_kernel = False  # nothing in the firewall

    def __init__(self, ctx: PublishContext) -> None:
        self.ctx = ctx
        self.mappings: list[Mapping] = []

    def publish(self, bound: Bound) -> None:
        """Attach the programs to CMD's cgroup, then give the reservations back (see the module)."""
        reason = unsupported_reason()
        if reason is not None:
            raise BadInput(
                f"published ports are discarded when using host network mode here: {reason}; "
                "drop -p/-P (the command's ports are the host's ports) or use a bridge network"
            )
        if any(m.proto not in IPPROTO for m, _ in bound):
            raise BadInput("with --network host only tcp and udp ports can be published; drop the sctp -p")
        self.mappings = [m for m, _ in bound]
        programs = plan(self.mappings, confinement(self.ctx))
        sid = self.ctx.owner.removeprefix(SANDBOX_PREFIX)
        path = cgroup.create(sid)
        if path is None:
            raise BadInput(
                "published ports are discarded when using host network mode here: cannot create "
                f"a cgroup under {cgroup.cgroup2_root()}; drop -p/-P or use a bridge network"
            )
        pins = pin_path(self.ctx.owner, fs.ensure_pin_dir(state_dir()))
        os.makedirs(pins, mode=0o700, exist_ok=True)
        for p in programs:
            self._attach(p.hook, p.name, asm.assemble(p.insns), path, os.path.join(pins, p.name))
        for _, s in bound:
            if s is not None:
                s.close()

    @staticmethod
    def _attach(hook: int, name: str, code: bytes, cg: str, pin: str) -> None:
        try:
            with (
                Program.load(c.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, code, hook, name) as prog,
                Link.attach_cgroup(prog, cg, hook) as link,
            ):
                link.pin(pin)
        except (BpfError, OSError) as e:
            raise KernelError(f"attaching {name} to {cg}", str(e)) from None

    def relays(self) -> dict[Mapping, socket.socket]:
        return {}

    def serve(self, relays: dict[Mapping, socket.socket] | None = None) -> None:
        """Nothing to relay: CMD's own (remapped) sockets serve."""

    def unpublish(self) -> list[str]:
        errors = cleanup(self.ctx.owner)
        path = cgroup.sandbox_path(self.ctx.owner.removeprefix(SANDBOX_PREFIX))
        if path is not None:
            try:
                os.rmdir(path)  # a rolled-back publish made it; a running CMD keeps it busy
            except OSError:
                pass
        return errors

    def describe(self) -> list[dict[str, str]]:
        return [
            {"binding": f"{m.host_binding()}/{m.proto}", "path": PATH_TEXT.format(inner=m.container_port)}
            for m in self.mappings
        ]

    def check(self) -> list[str]:
        path = pin_path(self.ctx.owner)
        want = {p.name for p in plan(self.mappings, confinement(self.ctx))} if self.mappings else set()
        have = set(os.listdir(path)) if os.path.isdir(path) else set()
        return [f"BPF link {n} is not pinned in {path}" for n in sorted(want - have)]

    def stats(self) -> dict[str, dict[str, int]]:
        return {}
