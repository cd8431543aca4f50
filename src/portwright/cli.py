"""The ``portwright`` command line: Docker's surface (run, ps, port, inspect, exec, stop, rm,
logs, network ...) over the engine. Every PortwrightError becomes one line on stderr and a
non-zero exit code; no traceback reaches the user for bad input or a failed kernel operation.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__, caps_cli, cliformat
from .bench import commands as bench_commands
from .diagnose import commands as diagnose_commands
from .engine import Engine
from .errors import BadInput, NotFound, PortwrightError
from .model import PUBLISH_MODES, Network
from .proxy import commands as proxy_commands
from .spec import parse_sandbox_spec
from .state import SandboxRecord, State, pid_alive

if TYPE_CHECKING:
    from .caps_model import Privileges


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, Docker-like, exit 2
        self.exit(2, f"portwright: {message}; see '{self.prog} --help'\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        """As argparse, but unrecognized arguments point to the help of the (sub)command that was
        given them (argparse reports them from the top-level parser)."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self._chosen(ns).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def _chosen(self, ns: argparse.Namespace) -> argparse.ArgumentParser:
        """The deepest subcommand parser the parsed arguments chose (this one if none)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(ns, action.dest, None) or "")
                if chosen is not None:
                    return chosen._chosen(ns) if isinstance(chosen, _Parser) else chosen
        return self


def _print_table(rows: list[list[str]], headers: list[str]) -> None:
    for line in cliformat.table(rows, headers):
        print(line)


def network_json(n: Network) -> dict[str, Any]:
    return cliformat.network_json(n)


def inspect_json(rec: SandboxRecord, state: State) -> dict[str, Any]:
    sb = rec.sandbox
    net = state.find_network(sb.network) if sb.network not in ("host", "none") else None
    doc = cliformat.inspect_doc(rec, net)
    doc["HostConfig"] = caps_cli.host_config(rec)
    return doc


def _print_docs(template: str | None, docs: list[dict[str, Any]]) -> None:
    """``inspect``'s output: a JSON array; ``-f json`` one object per line; ``-f TEMPLATE`` each
    document through the Go template."""
    if template is None:
        print(json.dumps(docs, indent=4, ensure_ascii=False))
    elif template == "json":
        for d in docs:
            print(json.dumps(d, ensure_ascii=False))
    else:
        for d in docs:
            print(cliformat.render(template, d))


# ---------------------------------------------------------------------- handlers
def cmd_network(args: argparse.Namespace) -> int:
    eng = Engine()
    if args.net_cmd == "create":
        n = eng.create_network(
            args.name, subnet=args.subnet, ipv6=args.ipv6, subnet6=args.subnet6, internal=args.internal
        )
        print(n.name)
    elif args.net_cmd == "ls":
        nets = eng.state.networks()
        if args.format == "json":
            print(json.dumps([network_json(n) for n in nets], indent=2))
        else:
            _print_table(
                [
                    [n.name, n.bridge, str(n.subnet4), str(n.subnet6 or ""), "yes" if n.internal else ""]
                    for n in nets
                ],
                ["NAME", "BRIDGE", "SUBNET", "SUBNET6", "INTERNAL"],
            )
    elif args.net_cmd == "inspect":
        _print_docs(args.format, [network_json(eng.state.network(n)) for n in args.names])
    elif args.net_cmd == "rm":
        for n in args.names:
            eng.remove_network(n)
            print(n)
    return 0


def _default_publish_mode(args: argparse.Namespace) -> str:
    """No --publish-mode: ebpf where the kernel supports it, else nat with one printed note."""
    if not (args.publish or args.publish_all) or args.network in ("host", "none"):
        return "nat"
    from .publish import registry

    mode, note = registry.default_mode()
    if note:
        print(f"portwright: {note}", file=sys.stderr)
    return mode


def cmd_run(args: argparse.Namespace) -> int:
    from .supervisor import check_command, run

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    from .config import default_firewall

    firewall = args.firewall or default_firewall()
    spec = parse_sandbox_spec(
        cmd,
        name=args.name,
        network=args.network,
        publish=args.publish or [],
        publish_all=args.publish_all,
        expose=args.expose or [],
        env=args.env or [],
        publish_mode=args.publish_mode or ("nat" if firewall == "host" else _default_publish_mode(args)),
        detach=args.detach,
        proxy_protocol=args.proxy_protocol,
        remove=args.rm,
        cwd=os.getcwd(),
        aliases=args.network_alias or [],
        udp_timeout=args.udp_timeout,
        proxy_workers=args.proxy_workers,
        proxy_connect_timeout=args.proxy_connect_timeout,
        host_env=os.environ,
        privileges=caps_cli.privileges_from(args),
        firewall=firewall,
    )
    _check_tty(args)
    check_command(spec)
    from .diagnose.firewallnote import input_drop_notes  # issue 16: say what the host firewall drops

    for line in input_drop_notes(spec):
        print(f"portwright: {line}", file=sys.stderr)
    if args.detach:
        from .zygote import spawn

        print(spawn(spec))
        return 0
    if args.tty:  # CMD gets this terminal as the foreground job (kernel/tty.py)
        spec = dataclasses.replace(spec, extra={**spec.extra, "tty": True})
    if args.interactive:  # as Docker: without -i, CMD reads /dev/null, not our stdin
        spec = dataclasses.replace(spec, extra={**spec.extra, "interactive": True})
    return run(spec)


def _check_tty(args: argparse.Namespace) -> None:
    """``-t``: CMD runs in the foreground on this terminal; there is no attach for ``-d``."""
    if not args.tty:
        return
    from .kernel.tty import require_terminal

    if getattr(args, "detach", False):
        raise BadInput("-t with -d: portwright has no attach; run it in the foreground, or drop -t")
    require_terminal()


def cmd_ps(args: argparse.Namespace) -> int:
    filters = cliformat.parse_filters(args.filter or [])
    st = State()
    show_exited = args.all or "status" in filters  # as docker ps: --filter status=exited needs no -a
    recs = [
        r for r in st.sandboxes() if (show_exited or r.status != "exited") and cliformat.matches(r, filters)
    ]
    if args.quiet:
        for r in recs:
            print(r.id)
        return 0
    now = time.time()
    rows = [cliformat.ps_row(r, now, args.no_trunc) for r in recs]
    for line in cliformat.format_rows(args.format or "table", rows):
        print(line)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    st = State()
    _print_docs(args.format, [inspect_json(st.sandbox(n), st) for n in args.names])
    return 0


def cmd_port(args: argparse.Namespace) -> int:
    rec = State().sandbox(args.name)
    maps = list(rec.sandbox.mappings)
    if args.port:
        port, _, proto = args.port.partition("/")
        if not port.isdigit():
            raise BadInput(f"port {args.port!r}: expected PORT[/PROTO], e.g. 80/tcp")
        maps = [m for m in maps if m.container_port == int(port) and (not proto or m.proto == proto)]
        if not maps:
            raise NotFound(f"no public port '{args.port}' published for {rec.name}")
    mode = rec.sandbox.publish_mode
    if args.format:  # over Docker's Ports map: {"80/tcp": [{"HostIp": ..., "HostPort": ...}]}
        data = cliformat.PortMap(cliformat.docker_ports(maps), PublishMode=mode)
        print(cliformat.render(args.format, data))
        return 0
    # Docker's exact lines, which scripts parse ($(portwright port web 80)); the mode in effect
    # (issue 11) is added only for a person at a terminal, and is '{{.PublishMode}}' for scripts.
    note = f"   ({mode})" if sys.stdout.isatty() else ""
    for m in maps:
        line = m.host_binding() if args.port else f"{m.container_port}/{m.proto} -> {m.host_binding()}"
        print(line + note)
    return 0


def _exec_target(
    args: argparse.Namespace,
) -> tuple[str | None, dict[str, str] | None, Privileges | None]:
    """The network namespace ``exec`` enters, the environment it gives CMD (a sandbox's ``-e``
    variables on top of ours, as ``docker exec`` does; None: ours as it is), and the sandbox's
    privileges (None for --pid/--container)."""
    if args.pid is not None or args.container is not None:
        from .diagnose.nsenter import netns_path_for

        return netns_path_for(pid=args.pid, container=args.container), None, None
    if not args.name:
        raise BadInput("exec: give a sandbox NAME, --pid PID or --container NAME")
    rec = State().sandbox(args.name)
    if rec.status != "running":
        raise BadInput(f"sandbox {rec.name!r} is not running; start a new one with 'portwright run'")
    return rec.sandbox.netns, {**os.environ, **dict(rec.spec.env)}, rec.spec.privileges


def cmd_exec(args: argparse.Namespace) -> int:
    from .kernel import runner

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if (args.pid is not None or args.container is not None) and args.name:
        # With --pid/--container there is no sandbox NAME: the optional positional took the
        # command's first word.
        cmd = [args.name, *cmd]
        args.name = None
    if not cmd:
        raise BadInput("exec: no command given; usage: portwright exec NAME -- CMD [ARG...]")
    _check_tty(args)
    path, env, privileges = _exec_target(args)
    setup = caps_cli.exec_setup(privileges, path)
    if args.tty:
        from .kernel import tty

        setup = _chain(setup, tty.take_foreground)
    try:
        with tty.foreground_back() if args.tty else contextlib.nullcontext():
            # as docker exec: stdin only with -i (-t hands over the terminal, input included)
            stdin = args.interactive or args.tty
            return runner.call(cmd, netns_path=path, env=env, setup=setup, stdin_null=not stdin)
    except FileNotFoundError:
        raise BadInput(f"exec: command {cmd[0]!r} not found") from None


def _chain(first: Any, then: Any) -> Any:
    """Two child-setup steps as one (the first may be None)."""
    if first is None:
        return then

    def both() -> None:
        first()
        then()

    return both


START_WAIT_SECONDS = 15.0  # restart: how long the stopped sandbox's teardown may take before start


def _start_one(st: State, name: str) -> None:
    """Bring an exited detached sandbox back: same ID, name, command and flags; the addresses
    it had where still free (engine ``RESUME``); its logs continue."""
    from .engine import RESUME
    from .supervisor import check_command
    from .zygote import spawn

    rec = st.sandbox(name)
    if rec.status == "running":
        return  # as docker start: nothing to do
    if rec.status != "exited":
        raise BadInput(
            f"sandbox {rec.name!r} is {rec.status}; wait for it, or remove it with 'portwright rm -f'"
        )
    if rec.spec.extra.get("unreadable"):
        raise BadInput(
            f"sandbox {rec.name!r}: its stored flags cannot be read; run it again with 'portwright run'"
        )
    last = json.loads(rec.last_addrs or "{}")
    keep = {"id": rec.id, **last, "created": rec.created, "finished": rec.finished}
    spec = dataclasses.replace(rec.spec, name=rec.name, extra={**rec.spec.extra, RESUME: keep})
    check_command(spec)
    spawn(spec)
    from .resume import moved, moved_note, preferred

    now = st.find_sandbox(rec.id)
    note = moved_note(rec.name, moved(preferred(last.get("ports")), now.sandbox.mappings if now else ()))
    if note is not None:
        print(f"portwright: {note}", file=sys.stderr)


def _each(names: Sequence[str], fn: Any) -> int:
    """Docker's way with several names: print each one done, one line per failure, go on."""
    failed = 0
    for n in names:
        try:
            fn(n)
            print(n)
        except PortwrightError as e:
            print(f"portwright: {e}", file=sys.stderr)
            failed = e.exit_code
    return failed


def cmd_start(args: argparse.Namespace) -> int:
    st = State()
    return _each(args.names, lambda n: _start_one(st, n))


def cmd_restart(args: argparse.Namespace) -> int:
    eng = Engine()

    def restart(n: str) -> None:
        eng.stop(n, timeout=args.time)
        deadline = time.monotonic() + START_WAIT_SECONDS
        while eng.state.sandbox(n).status != "exited" and time.monotonic() < deadline:
            time.sleep(0.05)  # the fork server may still be tearing the old one down
        _start_one(eng.state, n)

    return _each(args.names, restart)


def cmd_stop(args: argparse.Namespace) -> int:
    eng = Engine()
    for n in args.names:
        eng.stop(n, timeout=args.time)
        print(n)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    failed = 0
    for n, err in Engine().remove(list(args.names), force=args.force):
        if err is None:
            print(n)
        else:
            print(f"portwright: {err}", file=sys.stderr)
            failed = err.exit_code
    return failed


def cmd_logs(args: argparse.Namespace) -> int:
    from . import logs

    st = State()
    rec = st.sandbox(args.name)
    if not rec.log_path:
        raise BadInput(f"sandbox {rec.name!r} ran in the foreground; its output went to the terminal")
    try:
        tail = logs.parse_tail(args.tail)
        now = time.time()
        since = logs.parse_time("--since", args.since, now) if args.since else None
        until = logs.parse_time("--until", args.until, now) if args.until else None
    except ValueError as e:
        raise BadInput(str(e)) from None

    def running() -> bool:
        now = st.find_sandbox(rec.id)
        return (
            now is not None and now.status != "exited" and pid_alive(now.supervisor_pid, now.supervisor_start)
        )

    outs = (sys.stdout.buffer, sys.stderr.buffer)
    if logs.has_records(rec.log_path):
        printer = logs.Printer(outs, timestamps=args.timestamps, since=since, until=until)
        logs.show(rec.log_path, printer, tail=tail, follow=args.follow, running=running)
        return 0
    why = logs.no_times_reason(st.dir)
    if since or until:  # started without the log collector: nothing to compare with
        raise BadInput(f"--since/--until: {rec.name!r} was started without log times ({why}); drop them")
    if args.timestamps:
        print(
            f"portwright: {rec.name!r} was started without log times ({why}); showing them without",
            file=sys.stderr,
        )
    logs.show_plain(rec.log_path, outs, tail=tail, follow=args.follow, running=running)
    return 0


STATS_KEYS = (
    *("active", "total", "bytes_in", "bytes_out", "udp_flows", "udp_dropped", "errors"),
    *("abandoned", "connect_timeouts"),
)


def cmd_stats(args: argparse.Namespace) -> int:
    from .supervisor import query_stats

    st = State()
    recs = [st.sandbox(n) for n in args.names] or [r for r in st.sandboxes() if r.status == "running"]
    stats = {
        r.name: cliformat.relay_labels(r, query_stats(st, r.id))
        if pid_alive(r.supervisor_pid, r.supervisor_start)
        else {}
        for r in recs
    }
    if args.format == "json":  # one NAME: its mappings' counters; else keyed by sandbox name
        print(json.dumps(stats[recs[0].name] if len(args.names) == 1 else stats, indent=2))
        return 0
    rows = [[n, k, *(str(v.get(c, 0)) for c in STATS_KEYS)] for n, s in stats.items() for k, v in s.items()]
    if rows:
        _print_table(rows, ["NAME", "MAPPING", *(c.upper() for c in STATS_KEYS)])
    quiet = [r for r in recs if not stats[r.name]]
    if quiet:
        print(
            f"{', '.join(r.name for r in quiet)}: no userland counters (kernel NAT paths are counted by "
            "conntrack, not by portwright)"
        )
    return 0


PRUNE_WARNING = (
    "WARNING! This will remove all exited sandboxes and clean up after dead supervisors.\n"
    "Are you sure you want to continue? [y/N] "
)


def cmd_prune(args: argparse.Namespace) -> int:
    if not args.force:
        if not sys.stdin.isatty():
            raise BadInput("prune removes every exited sandbox: confirm with -f (stdin is not a terminal)")
        if input(PRUNE_WARNING).strip().lower() not in ("y", "yes"):
            return 0
    eng = Engine()
    cleaned = eng.reconcile()
    exited = [r for r in eng.state.sandboxes() if r.status == "exited"]
    removed = [r.name for r in exited]
    eng.remove([r.id for r in exited])
    for n in cleaned:
        print(f"cleaned up after dead supervisor: {n}")
    for n in removed:
        print(f"removed exited sandbox: {n}")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    from .completion import script

    sys.stdout.write(script(args.shell, build_parser()))
    return 0


ZYGOTE = "_zygote"  # the fork server's entry; not a subcommand, so no help or choice list shows it


def cmd_zygote(args: argparse.Namespace) -> int:
    from .zygote import main as zygote_main

    return zygote_main(list(args.rest))


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="portwright",
        description="Publish sandbox ports by NAT, proxy or host networking; "
        "measure each; tell who owns a port.",
    )
    p.add_argument("--version", action="version", version=f"portwright {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    _add_network_parser(sub)
    _add_run_parser(sub)
    _add_sandbox_parsers(sub)
    comp = sub.add_parser("completion", help="print the bash or zsh completion script")
    comp.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")
    comp.set_defaults(func=cmd_completion)

    # Light modules: they declare the options; each handler imports its package when it runs.
    bench_commands.register(sub)
    diagnose_commands.register(sub)
    proxy_commands.register(sub)
    return p


def _add_network_parser(sub: Any) -> None:
    net = sub.add_parser("network", help="manage bridge networks")
    nsub = net.add_subparsers(dest="net_cmd", metavar="CMD", required=True, parser_class=_Parser)
    c = nsub.add_parser("create", help="create a network")
    c.add_argument("name", help="the network's name")
    c.add_argument("--subnet", metavar="CIDR", help="IPv4 subnet (default: a free /24 of 198.18.0.0/15)")
    c.add_argument("--ipv6", action="store_true", help="give sandboxes IPv6 addresses too")
    c.add_argument("--subnet6", metavar="CIDR", help="IPv6 subnet (default: a free /64 of 2001:2::/48)")
    c.add_argument("--internal", action="store_true", help="no egress to the host's other interfaces")
    ls = nsub.add_parser("ls", help="list networks")
    ls.add_argument("--format", choices=["table", "json"], default="table", help="table, or json (one array)")
    ins = nsub.add_parser("inspect", help="show networks as a JSON array")
    ins.add_argument("names", nargs="+", metavar="NAME", help="network names")
    ins.add_argument("-f", "--format", metavar="TEMPLATE", help="Go template (e.g. '{{.Bridge}}') or json")
    rm = nsub.add_parser("rm", help="remove networks")
    rm.add_argument("names", nargs="+", metavar="NAME", help="network names")
    net.set_defaults(func=cmd_network)


def _add_tty_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="attach stdin (as Docker: without -i or -t, CMD reads /dev/null)",
    )
    p.add_argument(
        "-t",
        "--tty",
        action="store_true",
        help="CMD gets this terminal as its foreground job: window size, Ctrl-C/Ctrl-Z and job control",
    )


def _add_run_parser(sub: Any) -> None:
    r = sub.add_parser("run", help="run a command in a new sandbox")
    r.add_argument(
        "-d", "--detach", action="store_true", help="run in the background and print the sandbox's ID"
    )
    r.add_argument("--rm", action="store_true", help="with -d: remove the sandbox's record when CMD exits")
    _add_tty_flags(r)
    r.add_argument("--name", help="the sandbox's name (default pw_ and its ID's start)")
    r.add_argument("--network", default="pw0", help="NAME, host or none (default pw0)")
    r.add_argument(
        "--network-alias",
        action="append",
        metavar="ALIAS",
        help="another name the sandbox answers to on its network (repeatable; shared ones round-robin)",
    )
    r.add_argument(
        "-p",
        "--publish",
        action="append",
        metavar="SPEC",
        help="[ip:][hostPort[-end]:]containerPort[-end][/proto]",
    )
    r.add_argument(
        "-P", "--publish-all", action="store_true", help="publish every --expose'd port on a random host port"
    )
    r.add_argument(
        "--expose", action="append", metavar="PORT[-END][/PROTO]", help="declare a port CMD serves (for -P)"
    )
    r.add_argument(
        "-e",
        "--env",
        action="append",
        metavar="K=V",
        help="set K in CMD's environment (bare K: the host's value)",
    )
    r.add_argument(
        "--publish-mode", default=None, choices=PUBLISH_MODES, help="default: ebpf where supported, else nat"
    )
    r.add_argument(
        "--proxy-protocol", action="store_true", help="proxy mode: send a PROXY v2 header to the backend"
    )
    r.add_argument(
        "--firewall",
        default=None,
        choices=("forward", "host"),
        help="host: published ports obey the host firewall (ufw, firewalld, nft input) as a host service "
        "would; default from [run] firewall in config.toml, else forward",
    )
    r.add_argument(
        "--udp-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="proxy mode: forget an idle UDP flow after this long (default 90)",
    )
    r.add_argument(
        "--proxy-workers",
        type=int,
        default=0,
        metavar="N",
        help="proxy mode: relay worker processes sharing the listeners (default: one per core, at most 4)",
    )
    r.add_argument(
        "--proxy-connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="proxy mode: reset the client when the backend has not accepted after this long (default 10)",
    )
    caps_cli.add_args(r)
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]: the command to run")
    r.set_defaults(func=cmd_run)


def _add_sandbox_parsers(sub: Any) -> None:
    ps = sub.add_parser("ps", help="list sandboxes")
    ps.add_argument("-a", "--all", action="store_true", help="show exited sandboxes too")
    ps.add_argument("-q", "--quiet", action="store_true", help="print only the sandboxes' IDs")
    ps.add_argument(
        "--filter",
        action="append",
        metavar="KEY=VALUE",
        help="name=, id=, status=, network= or publish=PORT[-END][/PROTO] (a published container "
        "port, as docker ps); repeat: the same key OR'd, different keys AND'd",
    )
    ps.add_argument("--no-trunc", action="store_true", help="do not cut the COMMAND column")
    ps.add_argument(
        "--format",
        metavar="FORMAT",
        help="table (default), 'table TEMPLATE', json (one object per line) or a Go template, "
        "e.g. '{{.Names}} {{.Ports}}'",
    )
    ps.set_defaults(func=cmd_ps)

    i = sub.add_parser("inspect", help="show sandboxes as a JSON array")
    i.add_argument("names", nargs="+", metavar="NAME", help="sandbox names or IDs")
    i.add_argument(
        "-f",
        "--format",
        metavar="TEMPLATE",
        help="Go template, e.g. '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}'; "
        "json: one object per line",
    )
    i.set_defaults(func=cmd_inspect)

    pt = sub.add_parser("port", help="list a sandbox's published ports")
    pt.add_argument("name", help="the sandbox's name or ID")
    pt.add_argument("port", nargs="?", help="only this container port: PORT[/PROTO]")
    pt.add_argument(
        "-f",
        "--format",
        metavar="TEMPLATE",
        help="Go template over Docker's port map, e.g. '{{(index (index . \"80/tcp\") 0).HostPort}}'; "
        "'{{.PublishMode}}' is the mode in effect (ebpf, nat, proxy), which a terminal also sees "
        "after each line",
    )
    pt.set_defaults(func=cmd_port)

    e = sub.add_parser(
        "exec", help="run a command in a sandbox's (or container's, or process's) network namespace"
    )
    e.add_argument("name", nargs="?", help="the sandbox's name or ID (not with --pid/--container)")
    e.add_argument("--pid", type=int, help="enter the network namespace of this process")
    e.add_argument("--container", help="enter the network namespace of this Docker container")
    _add_tty_flags(e)
    e.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]: the command to run there")
    e.set_defaults(func=cmd_exec)
    _add_lifecycle_parsers(sub)


def _add_lifecycle_parsers(sub: Any) -> None:
    """stop, start, restart, rm, logs, stats and prune."""
    s = sub.add_parser("stop", help="stop sandboxes (SIGTERM, then SIGKILL after the grace period)")
    s.add_argument("names", nargs="+", metavar="NAME", help="sandbox names or IDs")
    s.add_argument(
        "-t",
        "--time",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="grace period before SIGKILL (default 10)",
    )
    s.set_defaults(func=cmd_stop)

    sta = sub.add_parser(
        "start", help="start stopped detached sandboxes again (same ID, flags and addresses)"
    )
    sta.add_argument("names", nargs="+", metavar="NAME", help="sandbox names or IDs")
    sta.set_defaults(func=cmd_start)

    rs = sub.add_parser("restart", help="stop sandboxes, then start them again")
    rs.add_argument("names", nargs="+", metavar="NAME", help="sandbox names or IDs")
    rs.add_argument(
        "-t",
        "--time",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="grace period before SIGKILL (default 10)",
    )
    rs.set_defaults(func=cmd_restart)

    rmp = sub.add_parser("rm", help="remove sandboxes")
    rmp.add_argument(
        "-f", "--force", action="store_true", help="kill a running sandbox at once (SIGKILL) and remove it"
    )
    rmp.add_argument("names", nargs="+", metavar="NAME", help="sandbox names or IDs")
    rmp.set_defaults(func=cmd_rm)

    lg = sub.add_parser("logs", help="show a detached sandbox's output (stdout to stdout, stderr to stderr)")
    lg.add_argument("name", help="the sandbox's name or ID")
    lg.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new output until the sandbox exits"
    )
    lg.add_argument("-n", "--tail", default="all", metavar="N", help="only the last N lines (default all)")
    lg.add_argument(
        "-t", "--timestamps", action="store_true", help="each line's time in front (RFC 3339, nanoseconds)"
    )
    lg.add_argument(
        "--since",
        metavar="TIME",
        help="lines from TIME on: RFC 3339, Unix seconds, or a duration ago (10m, 1h30m)",
    )
    lg.add_argument("--until", metavar="TIME", help="lines up to TIME (same forms as --since)")
    lg.set_defaults(func=cmd_logs)

    stt = sub.add_parser("stats", help="per-mapping counters of sandboxes' userland publishing")
    stt.add_argument(
        "names", nargs="*", metavar="NAME", help="sandbox names or IDs (default: every running one)"
    )
    stt.add_argument("--format", choices=["table", "json"], default="table", help="table or json")
    stt.add_argument(
        "--no-stream",
        action="store_true",
        help="print once and exit (as docker stats --no-stream; always so here)",
    )
    stt.set_defaults(func=cmd_stats)

    pr = sub.add_parser("prune", help="clean up after dead supervisors and remove exited sandboxes")
    pr.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    pr.set_defaults(func=cmd_prune)


# Diagnostics must see leftovers as they are (reconciling first would hide the stale state they
# report); the supervisor and the benchmark manage their own sandboxes.
NO_RECONCILE = {ZYGOTE, "bench", "who", "ports", "audit", "completion", None}


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == [ZYGOTE]:
        args = argparse.Namespace(command=ZYGOTE, func=cmd_zygote, rest=words[1:])
    else:
        parser = build_parser()
        args = parser.parse_args(words)
        if args.command is None:
            parser.print_help()
            return 2
    try:
        if args.command not in NO_RECONCILE and os.geteuid() == 0:
            Engine().reconcile()
        return int(args.func(args) or 0)
    except PortwrightError as e:
        print(f"portwright: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
