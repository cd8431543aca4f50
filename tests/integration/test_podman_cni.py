"""End to end: Debian's podman 4.3 with ``network_backend = "cni"`` publishes through portwright-cni.

A private containers.conf, storage root and CNI config dir live under a temp dir, so the host's
podman setup is never touched. The conflist chains the reference ``bridge`` (host-local IPAM in
198.18.216.0/24), then ``portwright-cni`` with ``reserveHostPort: false`` (conmon binds the
published ports itself after ADD). The image is ``podman import`` of a busybox-static tarball,
since nothing can be pulled. Skips, saying why, only where podman itself cannot start.
"""

from __future__ import annotations

import io
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pwutil import docker_user_rules, free_port

from conftest import need, sh
from portwright.cni import protocol as p
from portwright.cni.holder import holder_pids
from portwright.firewall import nft

CNI_DIR = "/usr/lib/cni"
SUBNET = "198.18.216.0/24"


@dataclass
class Podman:
    base: Path
    env: dict[str, str]
    bridge: str
    network: str

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [
            "podman",
            "--root",
            str(self.base / "root"),
            "--runroot",
            str(self.base / "runroot"),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--tmpdir",
            str(self.base / "tmp"),
            *args,
        ]
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        return r


def _busybox_tar() -> bytes:
    """A root filesystem with only busybox-static and a page to serve."""
    busybox = shutil.which("busybox")
    assert busybox is not None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "www", "tmp", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for tool in ("sh", "httpd"):
            link = tarfile.TarInfo(f"bin/{tool}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        page = b"hello from podman via portwright-cni\n"
        info = tarfile.TarInfo("www/index.html")
        info.size, info.mode = len(page), 0o644
        tar.addfile(info, io.BytesIO(page))
    return buf.getvalue()


@pytest.fixture
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    need("podman", "podman")
    plugin = shutil.which("portwright-cni") or os.path.join(os.path.dirname(sys.executable), "portwright-cni")
    if not os.access(plugin, os.X_OK):
        pytest.skip("portwright-cni is not installed (pip install -e .)")
    if not os.access(f"{CNI_DIR}/bridge", os.X_OK):
        pytest.skip("reference CNI plugins missing (apt-get install containernetworking-plugins)")
    base = tmp_path_factory.mktemp("pwt-podman")
    tag = secrets.token_hex(3)
    network, bridge = f"pwtpod{tag}", f"pwtp{tag}"
    for d in ("root", "runroot", "tmp", "net.d", "bin", "ipam"):
        (base / d).mkdir()
    (base / "bin" / "portwright-cni").symlink_to(plugin)
    conflist = {
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "isDefaultGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": SUBNET}]],
                    "dataDir": str(base / "ipam"),
                },
            },
            {
                "type": "portwright-cni",
                "capabilities": {"portMappings": True},
                "reserveHostPort": False,
                # conmon's cleanup runs DEL with none of our environment (PORTWRIGHT_STATE_DIR)
                "stateDir": os.environ["PORTWRIGHT_STATE_DIR"],
            },
        ],
    }
    (base / "net.d" / f"{network}.conflist").write_text(json.dumps(conflist, indent=2))
    conf = base / "containers.conf"
    conf.write_text(
        f'[network]\nnetwork_backend = "cni"\n'
        f'cni_plugin_dirs = ["{base / "bin"}", "{CNI_DIR}"]\n'
        f'network_config_dir = "{base / "net.d"}"\ndefault_network = "{network}"\n'
    )
    env = {**os.environ, "CONTAINERS_CONF": str(conf), "XDG_RUNTIME_DIR": str(base / "runroot")}
    pm = Podman(base, env, bridge, network)
    try:
        info = pm.run("info", "--format", "{{.Host.NetworkBackend}}", check=False, timeout=60)
        if info.returncode != 0:
            pytest.skip(f"podman cannot start here: {info.stderr.strip().splitlines()[-1:]}")
        if info.stdout.strip() != "cni":
            pytest.skip(f"podman ignores network_backend = cni here (uses {info.stdout.strip()!r})")
        tarball = base / "busybox.tar"
        tarball.write_bytes(_busybox_tar())
        pm.run("import", str(tarball), "localhost/pwt-busybox:latest")
        yield pm
    finally:
        pm.run("rm", "-af", "-t", "0", check=False)
        pm.run("system", "reset", "-f", check=False)
        sh("ip", "link", "del", bridge, check=False)
        shutil.rmtree(base, ignore_errors=True)


def _ulimits() -> list[str]:
    # podman's defaults (nofile/nproc 1048576) exceed a CI sandbox's hard limits and runc then
    # fails to start the container ("error setting rlimit"); ask for modest limits under ours.
    out = []
    for name, res in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, hard = resource.getrlimit(res)
        if hard != resource.RLIM_INFINITY:
            out += ["--ulimit", f"{name}={min(soft, 4096)}:{min(hard, 4096)}"]
    return out


def _entries_of(cid: str) -> set[str]:
    return {o for o in nft.owners() if o.startswith(p.TAG_PREFIX) and cid in o}


def test_podman_run_publish_rm(podman: Podman) -> None:
    need("curl", "curl")
    port = free_port()
    r = podman.run(
        "run",
        "-d",
        *_ulimits(),
        "--network",
        podman.network,
        "-p",
        f"{port}:8080",
        "localhost/pwt-busybox:latest",
        "/bin/httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    )
    cid = r.stdout.strip().splitlines()[-1]
    assert len(cid) == 64, r.stdout
    assert _entries_of(cid) == {p.owner_tag(cid, "eth0", podman.network)}
    # reserveHostPort is false: portwright holds nothing, conmon holds the port.
    assert [pid for pid, _ in holder_pids(p.owner_tag(cid, "eth0", podman.network))] == []
    out = ""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        c = sh("curl", "-sS", "--max-time", "2", f"http://127.0.0.1:{port}/", check=False)
        out = c.stdout
        if c.returncode == 0:
            break
        time.sleep(0.2)
    assert "hello from podman via portwright-cni" in out
    podman.run("rm", "-f", "-t", "0", cid)
    assert _entries_of(cid) == set()
    # DEL of the bridge's last container drops its DOCKER-USER accept: podman deletes the bridge
    # later (network rm, here the fixture) and no plugin runs after that to tidy up.
    assert docker_user_rules(podman.bridge) == []
