"""One home for measurement: every measuring module lives in ``bench/`` and runs programs only
through ``bench/driver.py``; the drop-in, UDP, ``--scale-shapes`` and ``nft-only`` are bench
options. Read with ``ast`` where it is about the code's shape; no root."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from portwright.bench import cli, commands, fwscale, iperf3, scale, scenarios
from portwright.errors import BadInput

SRC = Path(__file__).resolve().parents[2] / "src" / "portwright"


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            out |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and not n.level and n.module:
            out.add(n.module.split(".")[0])
    return out


def test_only_the_driver_runs_programs_in_the_bench() -> None:
    users = sorted(f.name for f in (SRC / "bench").glob("*.py") if "subprocess" in _imports(f))
    assert users == ["driver.py"]


def test_no_measurement_code_outside_the_bench() -> None:
    # iperf3 and wrk are the bench's load generators; nothing else in the package drives them.
    outside = sorted(
        str(f.relative_to(SRC))
        for f in SRC.rglob("*.py")
        if "bench" not in f.relative_to(SRC).parts
        and ('"iperf3"' in f.read_text() or '"wrk"' in f.read_text())
    )
    assert outside == []
    assert not (SRC / "proxy" / "measure.py").exists() and not (SRC / "firewall" / "bench.py").exists()


def test_no_bench_function_is_over_80_lines() -> None:
    long = [
        f"{f.name}:{n.name} {n.end_lineno - n.lineno + 1}"
        for f in (SRC / "bench").glob("*.py")
        for n in ast.walk(ast.parse(f.read_text()))
        if isinstance(n, ast.FunctionDef) and n.end_lineno and n.end_lineno - n.lineno + 1 > 80
    ]
    assert long == []


def test_udp_runs_are_unthrottled_single_stream_iperf3() -> None:
    cmd = iperf3.client_command("127.0.0.1", 5201, 1, 3, False, udp=True)
    assert cmd[-5:] == ["-u", "-b", "0", "-l", "1400"] and cmd[cmd.index("-P") + 1] == "1"
    assert "-u" not in iperf3.client_command("127.0.0.1", 5201, 10, 3, True)


def test_udp_iperf3_counts_what_arrived() -> None:
    doc = (
        '{"start": {"test_start": {"num_streams": 1, "reverse": 0}}, "end": {'
        '"sum": {"bits_per_second": 2e9, "bytes": 250000000, "seconds": 1.0, "lost_percent": 50},'
        '"sum_sent": {"bits_per_second": 2e9, "bytes": 250000000, "seconds": 1.0},'
        '"sum_received": {"bits_per_second": 1e9, "bytes": 125000000, "seconds": 1.0}}}'
    )
    assert iperf3.parse(doc).gbit_per_second == pytest.approx(1.0)


def _lab_with(targets: dict[str, scenarios.Target]) -> scenarios.Lab:
    lab = scenarios.Lab.__new__(scenarios.Lab)
    lab.targets = targets
    return lab


def test_runs_leave_out_what_a_target_cannot_do_and_keep_the_interleaving() -> None:
    t = {m: scenarios.Target(m, 1, 2, "127.0.0.1", "10.0.0.1") for m in ("nat", "direct", "docker-iptables")}
    t["docker-iptables"].cannot = {"bulk-udp": scenarios.IPTABLES_UDP_SKIP}
    cfg = scenarios.Config(
        mechanisms=list(t), placements=["local", "external"], scenarios=["bulk-in", "bulk-udp"]
    )
    runs = scenarios._runs(cfg, _lab_with(t), list(t))
    assert runs[:3] == [
        ("local", "bulk-in", "nat"),
        ("local", "bulk-in", "direct"),
        ("local", "bulk-in", "docker-iptables"),
    ]
    assert ("local", "bulk-udp", "docker-iptables") not in runs
    assert not [r for r in runs if r[0] == "external" and r[2] == "direct"]
    assert len(runs) == 3 + 2 + 2 + 1


def test_defaults_stay_the_article_experiment_and_the_drop_in_is_asked_for() -> None:
    cfg = scenarios.Config()
    assert "proxy-dropin" in scenarios.MECHANISMS and "proxy-dropin" not in cfg.mechanisms
    assert "bulk-udp" in scenarios.SCENARIOS and "bulk-udp" not in cfg.scenarios
    scenarios.Config(mechanisms=["proxy-dropin"], scenarios=["bulk-udp"]).validate()


def test_scale_caps_one_process_per_port_shapes() -> None:
    reason = scale.skip_reason("proxy-dropin", scale.DROPIN_CAP + 1)
    if reason is not None and "cap" not in reason:
        pytest.skip(reason)  # the drop-in is not installed here
    assert reason is not None and f"cap of {scale.DROPIN_CAP:,}" in reason
    assert scale.skip_reason("nft-only", 10000) is None and scale.skip_reason("nat", 10000) is None


def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    commands.register(p.add_subparsers())
    return p.parse_args(["bench", *argv])


def test_scale_shapes_option() -> None:
    assert cli._shapes(_parse().scale_shapes) == scale.SHAPES
    assert cli._shapes("nft-only,proxy-dropin") == ("nft-only", "proxy-dropin")
    with pytest.raises(BadInput) as e:
        cli._shapes("nat,xdp")
    assert "unknown shape 'xdp'" in str(e.value) and "\n" not in str(e.value)


def test_nft_only_publishes_n_ports_onto_n_backend_ports_inside_its_namespaces() -> None:
    maps = fwscale.mappings(3)
    assert [(m.host_port, m.container_port) for m in maps] == [(20000, 30000), (20001, 30001), (20002, 30002)]
    assert {str(m.container_ip) for m in maps} == {fwscale.BACKEND4}
    cmds = fwscale.topology_commands("h", "b", "x")
    assert cmds[0] == ["ip", "netns", "add", "h"]
    # every command after the namespaces exist runs inside one of them, never on the host
    for argv in cmds[3:]:
        assert argv[1:3] in (["-n", "h"], ["-n", "b"], ["-n", "x"], ["netns", "exec"]), argv
