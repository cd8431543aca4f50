"""gotemplate.py: Docker's documented ``--format`` examples over an inspect-shaped document, the
rest of the language piece by piece, its errors, and (where ``/usr/bin/docker`` is installed) the
same templates run by Docker's own Go text/template on ``docker context inspect``'s data, which
the CLI renders without a daemon."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest

from portwright.gotemplate import TemplateError, go_str, parse, render

# the shape of `docker inspect` output, trimmed to what the documented examples read
DOC: dict[str, Any] = {
    "Id": "4fa6e0f0c6786287e131c3852c58a2e01cc697a68231826813597e4994f1d6e2",
    "Name": "/Web",
    "Args": ["-g", "daemon off;"],
    "LogPath": "/var/lib/docker/containers/4fa6/4fa6-json.log",
    "Config": {"Image": "nginx:latest", "Env": ["PATH=/usr/bin", "A=1"], "Labels": {"tier": "front"}},
    "State": {"Status": "running", "Running": True, "Pid": 4242, "ExitCode": 0},
    "Mounts": [],
    "NetworkSettings": {
        "Networks": {"bridge": {"IPAddress": "172.17.0.2", "MacAddress": "02:42:ac:11:00:02"}},
        "Ports": {
            "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
            "8787/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32768"}],
        },
    },
}

# docs.docker.com: docker inspect (examples) and "Format command and log output"
DOCKER_DOCS = [
    ("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "172.17.0.2"),
    ("{{range .NetworkSettings.Networks}}{{.MacAddress}}{{end}}", "02:42:ac:11:00:02"),
    ("{{.LogPath}}", "/var/lib/docker/containers/4fa6/4fa6-json.log"),
    ("{{.Config.Image}}", "nginx:latest"),
    (
        "{{range $p, $conf := .NetworkSettings.Ports}} {{$p}} -> {{(index $conf 0).HostPort}} {{end}}",
        " 80/tcp -> 8080  8787/tcp -> 32768 ",
    ),
    ('{{(index (index .NetworkSettings.Ports "8787/tcp") 0).HostPort}}', "32768"),
    (
        "{{json .Config}}",
        '{"Image":"nginx:latest","Env":["PATH=/usr/bin","A=1"],"Labels":{"tier":"front"}}',
    ),
    ('{{join .Args " , "}}', "-g , daemon off;"),
    ("{{json .Mounts}}", "[]"),
    ("{{lower .Name}}", "/web"),
    ('{{split .Config.Image ":"}}', "[nginx latest]"),
    ("{{title .Name}}", "/Web"),
    ("{{upper .Name}}", "/WEB"),
    ("{{range .Config.Env}}{{println .}}{{end}}", "PATH=/usr/bin\nA=1\n"),
    ("{{.State.Pid}}", "4242"),
    ('{{index .Config.Labels "tier"}}', "front"),
]


@pytest.mark.parametrize(("template", "want"), DOCKER_DOCS)
def test_docker_documented_examples(template: str, want: str) -> None:
    assert render(template, DOC) == want


@pytest.mark.parametrize(
    ("template", "want"),
    [
        ("plain text, no actions", "plain text, no actions"),
        ("{{.State.Running}} {{.State.ExitCode}}", "true 0"),
        (
            "{{.NetworkSettings.Ports}}",
            "map[80/tcp:[map[HostIp:0.0.0.0 HostPort:8080]] 8787/tcp:[map[HostIp:0.0.0.0 HostPort:32768]]]",
        ),
        ("{{$.Name}}{{range .Args}}[{{.}}|{{$.State.Pid}}]{{end}}", "/Web[-g|4242][daemon off;|4242]"),
        ("{{range $i, $a := .Args}}{{$i}}={{$a}};{{end}}", "0=-g;1=daemon off;;"),
        ("{{range $a := .Args}}<{{$a}}>{{end}}", "<-g><daemon off;>"),
        ("{{range .Mounts}}x{{else}}none{{end}}", "none"),
        ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
        ("{{if .Mounts}}m{{else if .Args}}a{{else}}n{{end}}", "a"),
        ("{{if not .Mounts}}empty{{end}}", "empty"),
        ("{{with .Config}}{{.Image}}{{end}}", "nginx:latest"),
        ("{{with .Mounts}}x{{else}}no mounts{{end}}", "no mounts"),
        ("{{.Name | lower | upper}}", "/WEB"),
        ('{{index .Config.Labels "absent"}}', "<no value>"),
        ("{{index .Args 1}}", "daemon off;"),
        ("{{len .Args}} {{len .Config.Labels}}", "2 1"),
        ("a  {{- .State.Pid -}}  b", "a4242b"),
        ("a {{/* a comment */}}b", "a b"),
        ('{{printf "%s:%d" .Name .State.Pid}}', "/Web:4242"),
        ('{{printf "%-6s|%5d|%q|%%" "ab" 7 "x"}}', 'ab    |    7|"x"|%'),
        ('{{printf "%s %s" "one"}}', "one %!s(MISSING)"),
        ("{{truncate .Id 12}}", "4fa6e0f0c678"),
        ("{{pad .Name 2 1}}|", "  /Web |"),
        ('{{eq .State.Status "running"}} {{ne .State.Pid 1}} {{eq 3 1 2 3}}', "true true true"),
        ("{{lt 1 2}} {{ge 2 2}} {{gt 1 2}}", "true true false"),
        ('{{and .State.Running "yes"}} {{or .Mounts "fallback"}}', "yes fallback"),
        ("{{$x := .State.Pid}}{{$x}}", "4242"),
        ('{{print "a" 1 2 "b"}}', "a1 2b"),
        ("{{json .State.Running}} {{json .Name}}", 'true "/Web"'),
        ("{{`raw {{x}}`}}", "raw {{x}}"),
        ("{{.}}", go_str(DOC)),
    ],
)
def test_language(template: str, want: str) -> None:
    assert render(template, DOC) == want


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{.Nope}}", "no field 'Nope'"),
        ("{{.Name.X}}", "cannot take field 'X' of string"),
        ("{{range .Args}}x", "has no {{end}}"),
        ("{{end}}", "unexpected {{end}}"),
        ("{{.Name", "unclosed action"),
        ("{{frob .Name}}", 'function "frob" not defined'),
        ("{{.Name .Args}}", "non-function"),
        ("{{range .Name}}x{{end}}", "range can't iterate over string"),
        ("{{index .Args 5}}", "index out of range"),
        ("{{$nope}}", "undefined variable: $nope"),
        ("{{}}", "missing value"),
        ("{{if}}x{{end}}", "missing value for {{if}}"),
        ('{{define "x"}}{{end}}', "not supported"),
        ('{{lt 1 "a"}}', "incompatible types"),
        ("{{@}}", "unexpected '@'"),
    ],
)
def test_errors_say_what_and_where(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=_re(message)):
        render(template, DOC)


def _re(s: str) -> str:
    import re

    return re.escape(s)


def test_parse_does_not_evaluate() -> None:
    assert parse("{{.Missing.Field}}")  # a path is checked when it runs on data, as in Go


# The same templates through Docker's Go text/template: `docker context inspect default -f`
# renders client-side, with no daemon; its data is what `docker context inspect default` prints.
DIFFERENTIAL = [
    "{{.Name}}",
    "{{len .Endpoints}} {{json .Endpoints}}",
    '{{`raw {{x}}`}} {{"q}}"}}',
    "{{range $k, $v := .Endpoints}}{{$k}}={{$v.Host}};{{end}}",
    "{{range .Endpoints}}{{json .}}{{end}}",
    '{{(index .Endpoints "docker").Host}}',
    '{{printf "%-9s|%4d|%q" .Name 42 .Name}}',
    "{{if .Endpoints}}some{{else}}none{{end}} {{with .Name}}{{upper .}}{{end}}",
    '{{.Name | upper | lower}} {{split "a:b:c" ":"}} {{join (split "a:b" ":") "+"}}',
    '{{range $i, $e := split .Name "a"}}{{$i}}{{$e}} {{end}}',
    "a  {{- .Name -}}  b {{/* c */}}",
    '{{eq .Name "default"}} {{ne 1 2}} {{lt 1 2}} {{and 1 0}} {{or 0 "x"}} {{not ""}}',
    '{{print "a" 1 2 "b"}}|{{println "x" 1}}|{{title "hello world"}}',
]


def _docker() -> str | None:
    path = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
    return path


@pytest.mark.parametrize("template", DIFFERENTIAL)
def test_same_output_as_docker_go_templates(template: str, tmp_path: Any) -> None:
    docker = _docker()
    if docker is None:
        pytest.skip("no docker CLI installed to compare with")
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path)}  # the built-in default context only
    raw = subprocess.run([docker, "context", "inspect", "default"], capture_output=True, text=True, env=env)
    if raw.returncode != 0:
        pytest.skip(f"docker context inspect failed: {raw.stderr.strip()}")
    data = json.loads(raw.stdout)[0]
    theirs = subprocess.run(
        [docker, "context", "inspect", "default", "-f", template], capture_output=True, text=True, env=env
    )
    assert theirs.returncode == 0, theirs.stderr
    assert render(template, data) + "\n" == theirs.stdout


def test_random_templates_either_render_or_fail_in_one_line() -> None:
    """Bounded, seeded fuzzing: whatever a user types, the answer is text or one TemplateError
    (the CLI's one-line error), never another exception."""
    import random

    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    pieces = [
        "{{", "}}", "{{-", "-}}", " ", ".", ".Name", ".Args", ".Config.Labels", ".State", "$", "$x", "$k, $v :=",
        ":=", "|", "(", ")", "range", "if", "else", "with", "end", "json", "index", "len", "printf", "join",
        '"tier"', '"%s"', "0", "1", "-3", "`raw`", '"', "`", "text", "/*", "*/", "nil", "true", "eq", "not",
    ]  # fmt: skip
    for _ in range(3000):
        template = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 14)))
        try:
            out = render(template, DOC)
        except TemplateError as e:
            assert "\n" not in str(e), (seed, template, str(e))
        else:
            assert isinstance(out, str), (seed, template)
