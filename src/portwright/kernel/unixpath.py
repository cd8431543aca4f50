"""Unix sockets at paths of any length: ``sun_path`` holds only 107 bytes, and a state directory
(a test's mktemp, a user's PORTWRIGHT_STATE_DIR) may be longer."""

from __future__ import annotations

import os
import socket


def unix_op(sock: socket.socket, path: str, op: str) -> None:
    """bind or connect a unix socket to ``path`` however long its directory is: the directory
    is reached through /proc/self/fd/N, a short magic link."""
    directory, base = os.path.split(path)
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        getattr(sock, op)(f"/proc/self/fd/{fd}/{base}")
    finally:
        os.close(fd)
