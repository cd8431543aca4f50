"""The host-remap publisher without root: refusal where cgroup2 or BPF is missing (one line naming
why, reservations untouched), the confinement it derives from the spec, and what it describes."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from portwright.errors import BadInput
from portwright.firewall.backend import Firewall
from portwright.firewall.fake import FakeBackend
from portwright.kernel import cgroup
from portwright.kernel.bpf import probe
from portwright.model import ANY4, Mapping
from portwright.publish import hostremap, registry
from portwright.spec import parse_sandbox_spec


def _publisher(**kw: object) -> hostremap.HostRemapPublisher:
    spec = parse_sandbox_spec(["x"], network="host", **kw)  # type: ignore[arg-type]
    pub = registry.create(
        "host-remap", registry.PublishContext(spec, "pw:0123456789ab", Firewall(FakeBackend()))
    )
    assert isinstance(pub, hostremap.HostRemapPublisher)
    return pub


def test_without_cgroup2_the_request_is_refused_naming_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "cgroup2_root", lambda mounts="/proc/self/mounts": None)
    pub = _publisher(publish=["8080:80"])
    with socket.socket() as held:
        with pytest.raises(BadInput) as e:
            pub.publish([(Mapping("tcp", ANY4, 8080, ANY4, 80), held)])
        assert held.fileno() != -1  # the reservation stays the engine's to close on rollback
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("published ports are discarded when using host network mode here")
    assert "no cgroup2 hierarchy is mounted" in msg and "drop -p/-P" in msg


def test_without_bpf_the_request_is_refused_naming_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "cgroup2_root", lambda mounts="/proc/self/mounts": "/sys/fs/cgroup")
    monkeypatch.setattr(probe, "bind4", lambda: (False, "cannot load a inet4_bind program: EPERM"))
    assert hostremap.unsupported_reason() == (
        "the kernel refuses cgroup BPF bind programs (cannot load a inet4_bind program: EPERM)"
    )


def test_confinement_takes_the_ephemeral_range_and_exposed_tcp_udp(monkeypatch: pytest.MonkeyPatch) -> None:
    from portwright.kernel import sysctl

    monkeypatch.setattr(sysctl, "local_port_range", lambda: (40000, 50000))
    pub = _publisher(publish=["8080:80"], expose=["53/udp", "9000-9002", "7/sctp"])
    conf = hostremap.confinement(pub.ctx)
    assert conf.ephemeral == (40000, 50000)
    assert conf.exposed == ((socket.IPPROTO_UDP, 53, 53), (socket.IPPROTO_TCP, 9000, 9002))


def test_describe_says_bound_as_inner_remapped_at_bind() -> None:
    pub = _publisher(publish=["127.0.0.1:8080:80"])
    pub.mappings = [Mapping("tcp", ipaddress.IPv4Address("127.0.0.1"), 8080, ANY4, 80)]
    assert pub.describe() == [
        {"binding": "127.0.0.1:8080/tcp", "path": "host-remap: bound as :80, remapped at bind() (cgroup BPF)"}
    ]


def test_pins_live_under_the_state_dirs_pin_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("PORTWRIGHT_STATE_DIR", str(tmp_path))
    path = hostremap.pin_path("pw:0123456789ab")
    assert path.endswith("/hostremap/0123456789ab") and path.startswith("/sys/fs/bpf/portwright/")
    assert hostremap.cleanup("pw:0123456789ab") == []  # nothing pinned: nothing to do, no error
