"""``portwright-proxy``: a drop-in replacement for Docker's docker-proxy binary.

dockerd (``--userland-proxy-path``) starts one docker-proxy per published port and address
family and speaks to it through a small contract, which this module implements exactly:

- Go-style flags ``-proto tcp|udp|sctp -host-ip IP -host-port N -container-ip IP
  -container-port N [-use-listen-fd]`` (also ``--flag`` and ``-flag=value``); an unknown or
  malformed flag prints usage and exits 2, as Go's ``flag`` package does;
- once listening, ``0\\n`` is written to fd 3 in one write; on failure ``1\\n<message>`` is
  written and the process exits 1; fd 3 is closed either way (dockerd 20.10 reads two bytes and
  then the rest as the error text it shows as "Error starting userland proxy: ...");
- ``-use-listen-fd`` adopts the socket dockerd 28+ already bound, on fd 4; without it the socket
  is bound here (dockerd 20.10 to 27);
- SIGINT or SIGTERM stop it with exit status 0.

Behind the contract runs the same ProxyServer as ``--publish-mode proxy`` (splice relay, reset on
a dead backend, UDP flow table), so Docker users get it without changing anything else.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..kernel.proc import set_process_name

if TYPE_CHECKING:
    from ..model import Mapping

STATUS_FD = 3  # pipe to the parent: "0\n" or "1\n<message>"
LISTEN_FD = 4  # with -use-listen-fd: the socket dockerd bound for us
PROCESS_NAME = "portwright-prox"  # 15 bytes: what ss -p, ps and top show
_BOOL_FLAGS = {"use-listen-fd", "v", "version"}
_STR_FLAGS = {"proto", "host-ip", "host-port", "container-ip", "container-port"}
USAGE = """Usage of portwright-proxy (docker-proxy compatible):
  -container-ip value
    \tcontainer ip (default 0.0.0.0)
  -container-port int
    \tcontainer port (default -1)
  -host-ip value
    \thost ip (default 0.0.0.0)
  -host-port int
    \thost port (default -1)
  -proto string
    \tproxy protocol (default "tcp")
  -use-listen-fd
    \tuse a supplied listen fd
  -v\tprint version information and quit
  -version
    \tprint version information and quit
"""


class FlagError(Exception):
    """Bad command line: Go's flag package prints the reason and usage, then exits 2."""


class HelpRequested(Exception):
    """-h / -help: usage, exit 0."""


@dataclass(frozen=True, slots=True)
class ProxyArgs:
    proto: str = "tcp"
    host_ip: str = "0.0.0.0"
    host_port: int = -1
    container_ip: str = "0.0.0.0"
    container_port: int = -1
    use_listen_fd: bool = False
    version: bool = False


def _parse_bool(name: str, text: str) -> bool:
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise FlagError(f'invalid boolean value "{text}" for -{name}: parse error')


def _parse_int(name: str, text: str) -> int:
    try:
        return int(text, 0) if text.lower().startswith(("0x", "0o", "0b")) else int(text, 10)
    except ValueError:
        raise FlagError(f'invalid value "{text}" for flag -{name}: parse error') from None


def _parse_ip(name: str, text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise FlagError(f'invalid value "{text}" for flag -{name}: invalid IP address: {text}') from None


def parse_args(argv: Sequence[str]) -> ProxyArgs:
    """Parse docker-proxy's flags with Go ``flag`` semantics (stops at the first non-flag)."""
    vals: dict[str, object] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if len(arg) < 2 or arg[0] != "-":
            break  # first non-flag argument ends the flags
        if arg == "--":
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if not name or name[0] in "-=":
            raise FlagError(f"bad flag syntax: {arg}")
        i += 1
        value: str | None = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name in ("h", "help"):
            raise HelpRequested
        if name in _BOOL_FLAGS:
            vals[name] = True if value is None else _parse_bool(name, value)
            continue
        if name not in _STR_FLAGS:
            raise FlagError(f"flag provided but not defined: -{name}")
        if value is None:
            if i >= len(argv):
                raise FlagError(f"flag needs an argument: -{name}")
            value = argv[i]
            i += 1
        if name in ("host-port", "container-port"):
            vals[name] = _parse_int(name, value)
        elif name in ("host-ip", "container-ip"):
            vals[name] = _parse_ip(name, value)
        else:
            vals[name] = value
    return ProxyArgs(
        proto=str(vals.get("proto", "tcp")),
        host_ip=str(vals.get("host-ip", "0.0.0.0")),
        host_port=int(str(vals.get("host-port", -1))),
        container_ip=str(vals.get("container-ip", "0.0.0.0")),
        container_port=int(str(vals.get("container-port", -1))),
        use_listen_fd=bool(vals.get("use-listen-fd", False) or False),
        version=bool(vals.get("version", False) or vals.get("v", False)),
    )


def _status_pipe_open() -> bool:
    """Is fd 3 a pipe from our parent? (Run by hand, fd 3 may be absent or something else.)"""
    try:
        mode = os.fstat(STATUS_FD).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISREG(mode)


def _report(ok: bool, message: str, have_pipe: bool) -> None:
    if not have_pipe:
        if not ok:
            print(f"portwright-proxy: {message}", file=sys.stderr)
        return
    data = b"0\n" if ok else b"1\n" + message.encode(errors="replace")
    try:
        os.write(STATUS_FD, data)  # one write: dockerd reads the first two bytes as the verdict
    except OSError:
        pass
    finally:
        try:
            os.close(STATUS_FD)
        except OSError:
            pass


def _go_listen_error(a: ProxyArgs, err: Exception) -> str:
    """The error text, shaped like Go's so that dockerd users see what they know."""
    from ..errors import KernelError, PortInUse

    host = f"[{a.host_ip}]" if ":" in a.host_ip else a.host_ip
    where = f"listen {a.proto} {host}:{a.host_port}"
    if isinstance(err, PortInUse):
        return f"{where}: bind: address already in use (held by {err.owner})"
    if isinstance(err, KernelError):
        return f"{where}: {err.detail}"
    return f"{where}: {err}"


def mapping_for(a: ProxyArgs) -> Mapping:
    """The Mapping the flags ask for; ValueError with the message dockerd shows when they are bad."""
    from ..model import PROTOS, Mapping

    if a.proto not in PROTOS:
        raise ValueError(f"unsupported protocol {a.proto}")
    for name, port in (("host-port", a.host_port), ("container-port", a.container_port)):
        if not 0 <= port <= 65535 or (name == "container-port" and port == 0):
            raise ValueError(f"invalid -{name} {port}: give a port in 1-65535")
    if a.use_listen_fd and a.proto == "sctp":
        raise ValueError("-use-listen-fd is not supported for sctp")
    return Mapping(
        proto=a.proto,
        host_ip=ipaddress.ip_address(a.host_ip),
        host_port=a.host_port,
        container_ip=ipaddress.ip_address(a.container_ip),
        container_port=a.container_port,
    )


def run(a: ProxyArgs, have_pipe: bool) -> int:
    from .server import ProxyServer

    try:
        m = mapping_for(a)
    except ValueError as e:
        _report(False, str(e), have_pipe)
        return 1
    socks: dict[Mapping, socket.socket] = {}
    if a.use_listen_fd:
        try:
            socks[m] = socket.socket(fileno=LISTEN_FD)
        except OSError as e:
            _report(False, f"-use-listen-fd: fd {LISTEN_FD} is not a socket: {e.strerror}", have_pipe)
            return 1
    # SIGINT/SIGTERM are taken synchronously by the main thread; the loop threads inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    server = ProxyServer([m], sockets=socks)
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - every failure goes to dockerd as "1\n<message>"
        _report(False, _go_listen_error(a, e), have_pipe)
        return 1
    _report(True, "", have_pipe)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    have_pipe = _status_pipe_open()  # look before this process opens any file of its own
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        a = parse_args(args)
    except HelpRequested:
        sys.stderr.write(USAGE)
        return 0
    except FlagError as e:
        sys.stderr.write(f"{e}\n{USAGE}")
        return 2
    if a.version:
        from .. import __version__ as v

        print(f"portwright-proxy version {v} (docker-proxy compatible)")
        return 0
    set_process_name(PROCESS_NAME)
    return run(a, have_pipe)


if __name__ == "__main__":
    sys.exit(main())
