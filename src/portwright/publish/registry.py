"""The publisher registry: every publishing mechanism by name, built for one sandbox on demand.

The engine never names a mechanism in code: it asks ``mode_for(spec)`` which one the spec wants and
``create(name, context)`` for an instance. Modules are imported only when their mechanism is used,
so a nat sandbox never loads the relay. New mechanisms (the eBPF ones) register here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BadInput

if TYPE_CHECKING:
    from ..firewall.backend import Firewall
    from ..spec import SandboxSpec
    from .base import Publisher


@dataclass(frozen=True, slots=True)
class PublishContext:
    """What a publisher is handed: the sandbox's request, its owner tag, and the firewall."""

    spec: SandboxSpec
    owner: str
    firewall: Firewall


#: name -> "module:Class" of a class taking a PublishContext.
_REGISTRY: dict[str, str] = {
    "nat": "portwright.publish.nat:NatPublisher",
    "proxy": "portwright.publish.proxy:ProxyPublisher",
    "host": "portwright.publish.host:HostPublisher",
    "firewall-host": "portwright.publish.firewallhost:FirewallHostPublisher",
    "ebpf": "portwright.publish.ebpf:EbpfPublisher",
    "host-remap": "portwright.publish.hostremap:HostRemapPublisher",
}


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def register(name: str, target: str) -> None:
    """Add (or replace) a mechanism: ``target`` is ``"package.module:Class"``."""
    _REGISTRY[name] = target


def mode_for(spec: SandboxSpec) -> str | None:
    """The mechanism a spec asks for: host networking has its own (``host-remap`` when it
    publishes ports: CMD's bind() is rewritten in its cgroup), ``--network none`` has none."""
    if spec.network == "host":
        return "host-remap" if spec.port_specs() else "host"
    if spec.network == "none":
        return None
    if spec.firewall == "host":
        return "firewall-host"  # issue 16: the host firewall decides, as for a host service
    return spec.publish_mode


def cleanup(name: str, owner: str) -> list[str]:
    """Remove what a mechanism leaves outside the firewall for ``owner`` (BPF pins of host-remap)
    after its supervisor died: a module's optional ``cleanup(owner)``. Returns problems."""
    target = _REGISTRY.get(name)
    if target is None:
        return []
    fn = getattr(importlib.import_module(target.partition(":")[0]), "cleanup", None)
    return list(fn(owner)) if fn is not None else []


def sweep(owners: set[str]) -> list[str]:
    """Mechanisms whose kernel state is shared by all sandboxes (ebpf's maps and programs) drop
    what no sandbox in ``owners`` holds any more, and put back what was taken; lines to print."""
    sweep_fn = importlib.import_module("portwright.publish.ebpf").sweep
    return list(sweep_fn(owners))


def default_mode() -> tuple[str, str]:
    """The publish mode when none is given, and a note to print when it is not the best one:
    ``ebpf`` where the feature probes load and attach its programs here, else ``nat``."""
    from ..kernel.bpf import probe

    try:
        ok, why = probe.connect_rewrite()
    except OSError as e:  # no bpf() at all (seccomp, an old kernel)
        ok, why = False, str(e).splitlines()[0]
    if ok:
        return "ebpf", ""
    return "nat", f"publish mode nat: connect-time rewriting (ebpf) is unavailable here: {why}"


def create(name: str, ctx: PublishContext) -> Publisher:
    target = _REGISTRY.get(name)
    if target is None:
        raise BadInput(f"publish mode {name!r} is unknown; use one of {', '.join(_REGISTRY)}")
    module, _, cls = target.partition(":")
    publisher: Publisher = getattr(importlib.import_module(module), cls)(ctx)
    return publisher
