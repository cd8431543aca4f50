"""Test backend: answers every TCP connection and UDP datagram with the peer's address.

TCP: on connect, reads one line, replies "PEER <ip> <line>" and, after the client half-closes,
"BYE". An HTTP request (curl) gets a 200 whose body is "PEER <ip>". UDP: replies
"PEER <ip> <payload length>". Used to check that published paths reach the
sandbox and whether the client's source address survived (NAT keeps it; masquerade does not).
"""

import socket
import sys
import threading


def tcp(family: int, port: int) -> None:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    s.listen(128)
    while True:
        c, addr = s.accept()
        threading.Thread(target=serve, args=(c, addr[0]), daemon=True).start()


def serve(c: socket.socket, peer: str) -> None:
    with c:
        f = c.makefile("rb")
        line = f.readline().decode(errors="replace").strip()
        if line.startswith(("GET ", "HEAD ")):
            while f.readline() not in (b"\r\n", b"\n", b""):
                pass
            body = f"PEER {peer}\n".encode()
            c.sendall(
                b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
            )
            return
        c.sendall(f"PEER {peer} {line}\n".encode())
        rest = f.read()  # until the client half-closes
        c.sendall(f"BYE {len(rest)}\n".encode())


def udp(family: int, port: int) -> None:
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    while True:
        data, addr = s.recvfrom(65535)
        s.sendto(f"PEER {addr[0]} {len(data)}\n".encode(), addr)


if __name__ == "__main__":
    port = int(sys.argv[1])
    fams = [socket.AF_INET]
    if socket.has_ipv6:
        fams.append(socket.AF_INET6)
    for fam in fams:
        for fn in (tcp, udp):
            threading.Thread(target=fn, args=(fam, port), daemon=True).start()
    print(f"peer_server ready on {port}", flush=True)
    threading.Event().wait()
