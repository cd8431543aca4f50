"""A server for host-remap tests, run as CMD in a remapped host-network sandbox.

Usage: remap_app.py INNER_TCP INNER_UDP UNDECLARED EXPOSED. It binds INNER_TCP (TCP) and
INNER_UDP (UDP) as if it owned them, checks from inside what the application sees, prints that
as one JSON line, then serves: each TCP connection gets "inner PORT\\n", each datagram is echoed.
"""

import errno
import json
import socket
import sys
import threading


def udp_echo(u: socket.socket) -> None:
    u.settimeout(None)
    while True:
        data, src = u.recvfrom(2048)
        u.sendto(data, src)


def main() -> None:
    inner, inner_udp, undeclared, exposed = (int(a) for a in sys.argv[1:5])
    out: dict[str, object] = {}
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", inner))
    srv.listen(64)
    out["getsockname"] = srv.getsockname()[1]
    c = socket.create_connection(("127.0.0.1", inner), timeout=5)  # the server reaches itself
    a, _ = srv.accept()
    c.sendall(b"x")
    out["self_reach"] = a.recv(1) == b"x"
    out["self_peer"] = c.getpeername()[1]
    a.close()
    c.close()
    # [::1]:INNER too: only an IPv4 mapping exists, so the v6 socket goes to ::ffff:127.0.0.1:HOST
    c6 = socket.create_connection(("::1", inner), timeout=5)
    a, _ = srv.accept()
    out["self_peer6"] = list(c6.getpeername()[:2])
    a.close()
    c6.close()
    t = socket.socket()
    try:
        t.bind(("0.0.0.0", undeclared))
        out["undeclared"] = "bound"
    except OSError as e:
        out["undeclared"] = errno.errorcode.get(e.errno or 0, str(e.errno))
    t.close()
    t = socket.socket()
    t.bind(("0.0.0.0", exposed))
    out["exposed"] = t.getsockname()[1]
    t.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", inner_udp))
    out["udp_sockname"] = u.getsockname()[1]
    k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    k.settimeout(5)
    k.sendto(b"ping", ("127.0.0.1", inner_udp))
    data, src = u.recvfrom(100)
    u.sendto(data, src)
    back, frm = k.recvfrom(100)
    out["udp_self"] = [back.decode(), frm[1]]
    print(json.dumps(out), flush=True)
    threading.Thread(target=udp_echo, args=(u,), daemon=True).start()
    while True:
        conn, _ = srv.accept()
        conn.recv(1024)  # the client's line: closing with unread data would reset the connection
        conn.sendall(f"inner {srv.getsockname()[1]}\n".encode())
        conn.close()


if __name__ == "__main__":
    main()
