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
import struct

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


# --- the ruleset generation (NFT_MSG_GETGEN) ----------------------------------------------------
# include/uapi/linux/netfilter/nfnetlink.h: NFNL_SUBSYS_NFTABLES = 10, and a message's type is
# (subsystem << 8) | message. include/uapi/linux/netfilter/nf_tables.h, enum nf_tables_msg_types:
# NFT_MSG_NEWGEN = 15 (the answer), NFT_MSG_GETGEN = 16 (the question); enum
# nft_gen_attributes: NFTA_GEN_ID = 1, a big-endian u32. The kernel adds one to it at every
# committed transaction of the namespace, by anyone (nf_tables_commit: ++base_seq, skipping 0);
# an aborted batch leaves it alone.
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NLM_F_REQUEST = 1  # include/uapi/linux/netlink.h
NLMSG_ERROR = 2
NLA_TYPE_MASK = 0x3FFF  # the attribute type without the NESTED and BYTEORDER flags
_NLMSG = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
_NFGEN = struct.Struct("=BBH")  # struct nfgenmsg: family (AF_UNSPEC), version (NFNETLINK_V0), res_id
_NLA = struct.Struct("=HH")  # struct nlattr: len, type
SO_NETNS_COOKIE = 71  # include/uapi/asm-generic/socket.h (Linux 5.14): the namespace's u64 cookie


def getgen_request(seq: int) -> bytes:
    """The NFT_MSG_GETGEN request (pure)."""
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, 0)
    return (
        _NLMSG.pack(
            _NLMSG.size + len(body), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, NLM_F_REQUEST, seq, 0
        )
        + body
    )


def parse_newgen(data: bytes) -> int | None:
    """NFTA_GEN_ID from a NFT_MSG_NEWGEN answer (pure); None for anything else (an error, a
    truncated message)."""
    if len(data) < _NLMSG.size + _NFGEN.size:
        return None
    length, mtype, _, _, _ = _NLMSG.unpack_from(data, 0)
    if mtype != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN or length > len(data):
        return None
    off = _NLMSG.size + _NFGEN.size
    while off + _NLA.size <= length:
        alen, atype = _NLA.unpack_from(data, off)
        if alen < _NLA.size:
            return None
        if atype & NLA_TYPE_MASK == NFTA_GEN_ID and alen >= _NLA.size + 4:
            return int(struct.unpack_from(">I", data, off + _NLA.size)[0])
        off += (alen + 3) & ~3
    return None


def generation() -> tuple[int, int] | None:
    """(this network namespace's cookie, its nftables ruleset generation), or None where the
    kernel will not say (not root, no nf_tables, a kernel before 5.14 without SO_NETNS_COOKIE).
    Two reads that give the same pair saw the same ruleset: nothing was committed in between.
    The cookie tells namespaces apart (every namespace counts its generations from the start, and
    a cookie is never reused while the machine runs)."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER) as s:
            cookie = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
            s.settimeout(5.0)
            s.bind((0, 0))
            s.send(getgen_request(1))
            gen = parse_newgen(s.recv(RECV_BYTES))
    except OSError:
        return None
    return None if gen is None else (cookie, gen)
