"""Test backend for data integrity: every connection starts with a 24-byte header
(bytes the client will send, bytes the server must send, a seed). The server sends the
seeded pseudo-random stream while it reads, then the SHA-256 of everything it read. A relay that
reorders, drops or duplicates a byte anywhere is caught by the client on one side or the other.
"""

import hashlib
import random
import socket
import struct
import sys
import threading


def stream(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def serve(c: socket.socket) -> None:
    with c:
        head = b""
        while len(head) < 24:
            chunk = c.recv(24 - len(head))
            if not chunk:
                return
            head += chunk
        up, down, seed = struct.unpack("!QQQ", head)
        payload = stream(seed, down)
        sender = threading.Thread(target=c.sendall, args=(payload,))
        sender.start()
        h = hashlib.sha256()
        got = 0
        while got < up:
            chunk = c.recv(min(1 << 20, up - got))
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
        sender.join()
        c.sendall(h.digest())


def main() -> None:
    port = int(sys.argv[1])
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(512)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


if __name__ == "__main__":
    main()
