"""Binds TCP port ARGV[1] on 0.0.0.0 and answers every connection with "inner <its getsockname
port>\\n": run inside a host-remap sandbox, a client on the host port learns which inner port the
app believes it has."""

import socket
import sys

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(64)
while True:
    conn, _ = srv.accept()
    conn.sendall(f"inner {srv.getsockname()[1]}\n".encode())
    conn.close()
