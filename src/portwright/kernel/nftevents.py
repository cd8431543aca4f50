"""nftables change events: a raw netlink socket in the NFNLGRP_NFTABLES multicast group.

Every committed nftables transaction in this network namespace (``nft flush ruleset``, a table,
chain, set or element added or deleted, by anyone) is multicast by the kernel to the group
``NFNLGRP_NFTABLES``, the feed ``nft monitor`` prints. A watcher that only needs to know *that*
something changed (and then reads the table to decide what is missing) can listen to that group
directly: no process to spawn, no output to parse, and a sleeping ``select`` instead of a poll.
The socket belongs to the network namespace it was created in, so it watches the same table the
firewall backend edits.

The messages are not parsed: any message is "look again". When events arrive faster than they are
read, the kernel drops some and reports ``ENOBUFS`` on the next read; that is a change too.
"""

from __future__ import annotations

import errno
import socket

# include/uapi/linux/netlink.h: the netfilter netlink family.
NETLINK_NETFILTER = 12
# include/uapi/linux/netfilter/nfnetlink.h, enum nfnetlink_groups: NFNLGRP_NONE = 0, the
# conntrack groups 1..6, then NFNLGRP_NFTABLES = 7 (every nf_tables ruleset change).
NFNLGRP_NFTABLES = 7
# include/uapi/linux/netlink.h: setsockopt level and option to join one multicast group.
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
RECV_BYTES = 65536
RCVBUF_BYTES = 1 << 20  # a flush of a big table is one burst of messages; fewer ENOBUFS


class NftEvents:
    """A non-blocking subscription to this namespace's nftables changes. Needs CAP_NET_ADMIN."""

    def __init__(self) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
        )
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            except OSError:
                pass  # the default buffer works; overruns are reported as changes anyway
            self.sock.bind((0, 0))
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> bool:
        """Read every pending message; True when at least one change was seen (or lost)."""
        seen = False
        while True:
            try:
                if not self.sock.recv(RECV_BYTES):
                    return seen
                seen = True
            except BlockingIOError:
                return seen
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    seen = True  # the kernel dropped events: something changed
                    continue
                raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NftEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_events() -> NftEvents | None:
    """A subscription, or None where this process may not join the group (not root, or
    nf_tables is unavailable): the caller then falls back to a slow re-check."""
    try:
        return NftEvents()
    except OSError:
        return None
