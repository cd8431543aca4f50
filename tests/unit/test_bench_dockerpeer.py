"""Docker's userland-proxy=false rule shape (pure), the servers' config, and the CLI surface."""

from __future__ import annotations

import argparse

import pytest

from portwright.bench import cli, commands, dockerpeer, scenarios, servers
from portwright.errors import BadInput


def test_docker_shape_matches_dockerd_20_10() -> None:
    s = dockerpeer.docker_shape(
        "PWB-T", "br0", "198.19.0.0/24", [dockerpeer.Forward(9000, "198.19.0.2", 9000)]
    )
    rules = [(t, " ".join(a)) for t, a in s.rules]
    assert ("nat", "-A PREROUTING -m addrtype --dst-type LOCAL -j PWB-T") in rules
    assert ("nat", "-A OUTPUT -m addrtype --dst-type LOCAL -j PWB-T") in rules
    assert ("nat", "-A POSTROUTING -o br0 -m addrtype --src-type LOCAL -j MASQUERADE") in rules
    assert ("nat", "-A POSTROUTING -s 198.19.0.0/24 ! -o br0 -j MASQUERADE") in rules
    assert (
        "nat",
        "-A POSTROUTING -s 198.19.0.2/32 -d 198.19.0.2/32 -p tcp -m tcp --dport 9000 -j MASQUERADE",
    ) in rules
    assert ("nat", "-A PWB-T -p tcp -m tcp --dport 9000 -j DNAT --to-destination 198.19.0.2:9000") in rules
    assert (
        "filter",
        "-A PWB-T -d 198.19.0.2/32 ! -i br0 -o br0 -p tcp -m tcp --dport 9000 -j ACCEPT",
    ) in rules
    assert ("filter", "-A FORWARD -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT") in rules
    # Never Docker's own chain names.
    assert all("DOCKER" not in r for _, r in rules)


def test_thousand_ports_are_a_thousand_dnat_rules_in_one_chain() -> None:
    fw = [dockerpeer.Forward(20000 + i, "198.19.0.2", 30000 + i) for i in range(1000)]
    s = dockerpeer.docker_shape("PWB-T", "br0", "198.19.0.0/24", fw)
    dnat = [a for t, a in s.rules if t == "nat" and a[1] == "PWB-T"]
    assert len(dnat) == 1000
    text = dockerpeer.restore_text(s)
    assert text.startswith("*nat\n:PWB-T - [0:0]\n") and text.count("COMMIT") == 2


def test_docker_proxy_command() -> None:
    assert dockerpeer.docker_proxy_command("0.0.0.0", 9000, "198.19.0.2", 80) == [
        "/usr/sbin/docker-proxy",
        "-proto",
        "tcp",
        "-host-ip",
        "0.0.0.0",
        "-host-port",
        "9000",
        "-container-ip",
        "198.19.0.2",
        "-container-port",
        "80",
    ]


def test_servers(tmp_path: object) -> None:
    conf = servers.nginx_conf("/tmp/x", 8080)
    assert "daemon off;" in conf and "listen 8080" in conf and "pid /tmp/x/nginx.pid;" in conf
    out = "LISTEN 0 4096 0.0.0.0:8080 0.0.0.0:*\nLISTEN 0 128 *:5201 *:*\nLISTEN 0 128 [::]:22 [::]:*\n"
    assert servers.ports_listening(out, [5201, 8080])
    assert not servers.ports_listening(out, [5201, 8081])


def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    commands.register(sub)
    return p.parse_args(["bench", *argv])


def test_cli_defaults_are_the_article_experiment_plus_http() -> None:
    cfg = cli.config_from_args(_parse())
    assert cfg.streams == 10 and cfg.rounds == 3 and cfg.placements == ["local"]
    assert cfg.mechanisms == ["host", "direct", "nat", "ebpf", "proxy", "docker-proxy", "docker-iptables"]
    assert cfg.scenarios == ["bulk-in", "bulk-out", "conn", "rr"]
    # zero-arg budget: runs x (duration + overhead) stays within ~6 minutes (ebpf made it 7 mechanisms)
    per_run = cfg.duration + scenarios.RUN_OVERHEAD_S + scenarios.SETTLE_S
    assert cfg.planned_runs(cfg.mechanisms) * per_run < 360


@pytest.mark.parametrize(
    "argv,needle",
    [
        (("--mechanisms", "nat,bogus"), "unknown mechanism 'bogus'"),
        (("--scenarios", "bulk"), "unknown scenario 'bulk'"),
        (("--placement", "moon"), "--placement moon"),
        (("--duration", "0"), "--duration 0"),
        (("--rounds", "0"), "--rounds 0"),
    ],
)
def test_cli_bad_input_is_one_line(argv: tuple[str, ...], needle: str) -> None:
    with pytest.raises(BadInput) as e:
        cli.config_from_args(_parse(*argv))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_scale_sizes() -> None:
    assert cli._sizes("1,100") == (1, 100)
    with pytest.raises(BadInput):
        cli._sizes("1,x")
