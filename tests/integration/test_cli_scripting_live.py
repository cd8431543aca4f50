"""Scripting against ``portwright`` as against ``docker`` (issue 17): shell pipelines that read
``inspect -f``, ``port -f``, ``ps -q``/``--filter`` and ``ps --format json`` (one object per
line), then use what they read to reach the sandbox with curl."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pwutil import free_port, inspect, port_is_free, pw, temp_network, uniq, wait_tcp

pytestmark = pytest.mark.integration
PW = f"{sys.executable} -m portwright"


def sh(script: str) -> str:
    p = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"{script}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def run_web(name: str, net: str) -> int:
    """Start the sandbox on a block of 10 host ports; the first port. The machine is shared: any
    client's ephemeral port may sit inside a block that was free a moment ago (seen: "host port
    127.0.0.1:40614/tcp is already in use by another socket"), so a taken block is drawn again."""
    for _ in range(5):
        base = free_port()
        base = base - base % 10
        if not all(port_is_free(p) for p in range(base, base + 10)):
            continue
        r = pw(
            "run", "-d", "--name", name, "--network", net,
            "-p", f"127.0.0.1:{base}-{base + 9}:8000-8009",
            "--", sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8003",
            check=False,
        )  # fmt: skip
        if r.returncode == 0:
            return base
        assert r.returncode == 4 and "already in use" in r.stderr, r.stderr  # only a taken port is retried
    raise AssertionError("no free block of 10 host ports in 5 draws")


@pytest.fixture(scope="module")
def web() -> Iterator[tuple[str, str, int]]:
    """A detached http.server on ports 8000-8009 published as one range; (name, network, first host port)."""
    with temp_network(prefix="sc") as net:
        name = uniq("sc")
        base = run_web(name, net)
        try:
            wait_tcp(None, inspect(name)["NetworkSettings"]["IPAddress"], 8003)
            yield name, net, base
        finally:
            pw("rm", "-f", name, check=False)


def test_inspect_prints_an_array_and_the_articles_template_works(web: tuple[str, str, int]) -> None:
    name, net, _ = web
    docs = json.loads(pw("inspect", name).stdout)
    assert isinstance(docs, list) and len(docs) == 1 and docs[0]["Name"] == name
    assert docs[0]["Created"].endswith("Z") and "T" in docs[0]["Created"]
    # docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' NAME, used as a script uses it
    body = sh(
        f"ip=$({PW} inspect -f '{{{{range .NetworkSettings.Networks}}}}{{{{.IPAddress}}}}{{{{end}}}}' {name}); "
        "curl -sS --max-time 5 -o /dev/null -w '%{http_code}' http://$ip:8003/"
    )
    assert body == "200"
    bridge = sh(f"{PW} network inspect -f '{{{{.Bridge}}}}' {net}").strip()
    assert bridge == json.loads(pw("network", "inspect", net).stdout)[0]["Bridge"]


def test_port_template_gives_a_usable_host_port(web: tuple[str, str, int]) -> None:
    name, _, base = web
    code = sh(
        f"""p=$({PW} port {name} -f '{{{{(index (index . "8003/tcp") 0).HostPort}}}}'); """
        "curl -sS --max-time 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:$p/"
    )
    assert code == "200"
    assert pw("port", name, "8003", "-f", "{{range $k, $v := .}}{{$k}}{{end}}").stdout == "8003/tcp\n"


def test_ps_for_scripts(web: tuple[str, str, int]) -> None:
    name, net, base = web
    sid = inspect(name)["Id"]
    assert sh(f"{PW} ps -q --filter name={name}").split() == [sid]
    assert sid in sh(f"{PW} ps -q --filter publish=8005/tcp").split()
    assert sid not in sh(f"{PW} ps -q --filter publish=9000").split()
    assert sid not in sh(f"{PW} ps -q --filter status=exited").split()
    assert sid in sh(f"{PW} ps -q --filter network={net} --filter status=running").split()
    # one JSON object per line: each line parses alone (what `jq -c` pipelines rely on)
    lines = pw("ps", "--format", "json").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    mine = [r for r in rows if r["Names"] == name]
    assert len(mine) == 1 and mine[0]["ID"] == sid and mine[0]["State"] == "running"
    # the PORTS column: ten mappings are one range, as docker ps shows them
    assert mine[0]["Ports"] == f"127.0.0.1:{base}-{base + 9}->8000-8009/tcp"
    table = pw("ps", "--filter", f"name={name}").stdout.splitlines()
    assert table[0].split()[:3] == ["SANDBOX", "ID", "COMMAND"]
    assert f"127.0.0.1:{base}-{base + 9}->8000-8009/tcp" in table[1] and len(table) == 2
    assert sh(f"{PW} ps --filter name={name} --format '{{{{.Names}}}} {{{{.State}}}}'") == f"{name} running\n"
    assert "…" in pw("ps", "--filter", f"name={name}").stdout  # the long command is cut
    assert "http.server --bind" in pw("ps", "--no-trunc", "--filter", f"name={name}").stdout


def test_bad_templates_and_filters_are_one_line(web: tuple[str, str, int]) -> None:
    name, _, _ = web
    for args in (
        ("inspect", "-f", "{{.NoSuchField}}", name),
        ("inspect", "-f", "{{range .Name}}", name),
        ("ps", "--filter", "colour=red"),
        ("ps", "--format", "{{.Nope}}"),
    ):
        r = pw(*args, check=False)
        assert r.returncode == 2 and r.stdout == "", (args, r.stdout)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_bash_completes_sandbox_and_network_names(web: tuple[str, str, int], tmp_path: Path) -> None:
    name, net, _ = web
    script = tmp_path / "portwright.bash"
    script.write_text(pw("completion", "bash").stdout)
    exe = Path(sys.executable).parent / "portwright"  # the console script, as the user types it

    def complete(*words: str) -> list[str]:
        quoted = " ".join(f"'{w}'" for w in words)
        prog = (
            f"source {script}; COMP_WORDS=('{exe}' {quoted}); COMP_CWORD={len(words)}; COMPREPLY=(); "
            "__portwright; printf '%s\\n' \"${COMPREPLY[@]}\""
        )
        return subprocess.run(["bash", "-c", prog], capture_output=True, text=True, timeout=60).stdout.split()

    assert complete("logs", name[:4]) and name in complete("logs", name[:4])
    assert name in complete("inspect", "-f", "{{.Id}}", name[:-1])
    assert net in complete("network", "inspect", net[:3])
    assert net in complete("run", "--network", net[:3])
