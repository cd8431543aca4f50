"""docker-proxy's command line, parsed with Go ``flag`` semantics by portwright-proxy."""

from __future__ import annotations

import pytest

from portwright.proxy import dockerproxy
from portwright.proxy.dockerproxy import FlagError, HelpRequested, ProxyArgs, parse_args

DOCKERD_2010 = [
    "-proto",
    "tcp",
    "-host-ip",
    "0.0.0.0",
    "-host-port",
    "8080",
    "-container-ip",
    "198.19.0.2",
    "-container-port",
    "80",
]


def test_dockerd_20_10_command_line() -> None:
    assert parse_args(DOCKERD_2010) == ProxyArgs("tcp", "0.0.0.0", 8080, "198.19.0.2", 80, False)


def test_dockerd_28_adds_use_listen_fd() -> None:
    a = parse_args([*DOCKERD_2010, "-use-listen-fd"])
    assert a.use_listen_fd is True


@pytest.mark.parametrize(
    "argv",
    [
        ["--proto=udp", "--host-ip=::", "--host-port=53", "--container-ip=198.19.0.3", "--container-port=53"],
        [
            "-proto=udp",
            "-host-ip",
            "::",
            "-host-port",
            "53",
            "-container-ip=198.19.0.3",
            "-container-port",
            "53",
        ],
    ],
)
def test_go_flag_spellings(argv: list[str]) -> None:
    assert parse_args(argv) == ProxyArgs("udp", "::", 53, "198.19.0.3", 53, False)


def test_defaults_match_docker_proxy() -> None:
    assert parse_args([]) == ProxyArgs("tcp", "0.0.0.0", -1, "0.0.0.0", -1, False)


def test_bool_values_and_version() -> None:
    assert parse_args(["-use-listen-fd=false"]).use_listen_fd is False
    assert parse_args(["-use-listen-fd=T"]).use_listen_fd is True
    assert parse_args(["-v"]).version and parse_args(["--version"]).version


def test_parsing_stops_at_first_non_flag() -> None:
    assert parse_args(["-host-port", "1", "extra", "-bogus"]).host_port == 1
    assert parse_args(["-host-port", "1", "--", "-bogus"]).host_port == 1


def test_ipv6_addresses_are_normalised() -> None:
    assert parse_args(["-host-ip", "2001:2:0::1"]).host_ip == "2001:2::1"


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["-bogus"], "flag provided but not defined: -bogus"),
        (["-host-port"], "flag needs an argument: -host-port"),
        (["-host-port", "eighty"], 'invalid value "eighty" for flag -host-port'),
        (["-host-ip", "999.1.1.1"], 'invalid value "999.1.1.1" for flag -host-ip'),
        (["-use-listen-fd=maybe"], 'invalid boolean value "maybe"'),
        (["---proto", "tcp"], "bad flag syntax"),
    ],
)
def test_bad_flags(argv: list[str], msg: str) -> None:
    with pytest.raises(FlagError, match=msg):
        parse_args(argv)


def test_help() -> None:
    with pytest.raises(HelpRequested):
        parse_args(["-h"])


def test_main_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert dockerproxy.main(["-nope"]) == 2
    assert "flag provided but not defined: -nope" in capsys.readouterr().err
    assert dockerproxy.main(["-help"]) == 0
    assert dockerproxy.main(["-version"]) == 0
    assert "docker-proxy compatible" in capsys.readouterr().out
