"""The servers the bench measures against: iperf3 and nginx, in one small shell supervisor.

Owns the nginx configuration (foreground, one worker, no logs, a 17-byte body, all paths in a
private temp directory) and the ``sh -c`` line that runs both servers as the sandbox command and
stops both on SIGTERM. The same command serves every mechanism, so the servers are never the
difference between two mechanisms.
"""

from __future__ import annotations

import os
import shlex

BODY = "portwright bench\n"
IPERF_PORT = 5201
HTTP_PORT = 8080

NGINX_CONF = """\
# portwright bench: a static endpoint in the foreground, everything under {dir}
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  server {{
    listen {port} backlog=4096;
    location / {{ default_type text/plain; return 200 "{body}"; }}
  }}
}}
"""


def nginx_conf(directory: str, port: int) -> str:
    return NGINX_CONF.format(dir=directory, port=port, body=BODY.replace("\n", "\\n"))


def write_nginx_conf(directory: str, port: int) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "nginx.conf")
    with open(path, "w", encoding="ascii") as f:
        f.write(nginx_conf(directory, port))
    return path


def server_command(directory: str, iperf_port: int, http_port: int) -> list[str]:
    """``sh -c`` that runs ``iperf3 -s`` and nginx, and stops both when it is signalled."""
    conf = write_nginx_conf(directory, http_port)
    script = (
        f"iperf3 -s -p {iperf_port} >/dev/null 2>&1 & a=$!; "
        f"nginx -c {shlex.quote(conf)} -p {shlex.quote(directory)} & b=$!; "
        "trap 'kill $a $b 2>/dev/null; wait; exit 0' TERM INT HUP; wait"
    )
    return ["sh", "-c", script]


def ports_listening(ss_output: str, ports: list[int]) -> bool:
    """True when every port appears as a local TCP listener in ``ss -Hltn`` output."""
    found: set[int] = set()
    for line in ss_output.splitlines():
        cols = line.split()
        if len(cols) < 4:
            continue
        local = cols[3]
        try:
            found.add(int(local.rsplit(":", 1)[1]))
        except (IndexError, ValueError):
            continue
    return all(p in found for p in ports)
