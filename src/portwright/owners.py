"""Owner tags: the one place that says how a kernel object names who owns it.

Every nft element and rule portwright creates carries a tag in its comment, so teardown, reconcile,
CNI GC and ``who`` are exact with nothing else to go on. This module makes and reads every kind of
tag, and is pure (no I/O):

* ``pw:<sandbox id>``: a sandbox of ``portwright run`` (``sandbox_owner``);
* ``cni:<containerID>:<ifname>:<network>``: one portwright-cni attachment (``cni_owner``), and the
  earlier ``cni:<containerID>:<ifname>`` form (``cni_legacy_owner``);
* ``pw-net:<name>``: a network's rules and bridge element (``network_tag``);
* ``pw-base: <why>``: the fixed rules of the table;
* ``h:<sha256 hex>``: the comment of an owner too long for nft (``nft_comment``).

``parse_owner`` tells them apart. Sandbox and CNI tags are owners (``unpublish`` removes what
they tag); network and base tags are not.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from .errors import BadInput

SANDBOX_PREFIX = "pw:"
CNI_PREFIX = "cni:"
NET_TAG_PREFIX = "pw-net:"  # per-network rules and bridge set elements
BASE_TAG = "pw-base"  # fixed rules (comment "pw-base: <why>")
HASHED_PREFIX = "h:"  # owner tags longer than MAX_COMMENT become "h:<sha256 hex>"
MAX_COMMENT = 128  # nft refuses longer comments ("128 characters maximum allowed")

# The CNI spec's grammar of container IDs (and of network names): alphanumeric first, then alnum,
# '_', '.', '-'. Used with fullmatch: a '$' would also match before a trailing newline. Neither
# grammar has ':' and an ifname may not contain one, so the fields of a CNI tag split back apart.
CNI_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# Marks a digest field. It is in neither grammar, so a digest never equals a plain ID or name.
DIGEST_MARK = "#"
NET_PLAIN_MAX = 40  # longer network names are written as a digest: 4+64+1+15+1+40 <= MAX_COMMENT
NET_DIGEST_HEX = 24  # 96 bits: the network part of a tag, "#" + 24 hex
CID_SHOWN = 12  # a long container ID keeps its first 12 characters (as `podman ps` shows)
CID_DIGEST_HEX = 32  # 128 bits of SHA-256 of the whole container ID

OwnerKind = Literal["sandbox", "cni", "network", "base", "hashed", "other"]


# ------------------------------------------------------------------------------------------------
# Making tags
# ------------------------------------------------------------------------------------------------


def sandbox_owner(sandbox_id: str) -> str:
    """The owner tag of a sandbox's kernel objects."""
    return SANDBOX_PREFIX + sandbox_id


def _digest(text: str, hex_chars: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:hex_chars]


def network_field(network: str) -> str:
    """How a CNI tag names ``network``: the name itself, or ``#`` and a digest when it is long or
    outside the spec's grammar. It depends on the name alone, so GC finds its network's tags."""
    if len(network) <= NET_PLAIN_MAX and CNI_NAME_RE.fullmatch(network):
        return network
    return DIGEST_MARK + _digest(network, NET_DIGEST_HEX)


def cni_owner(container_id: str, ifname: str, network: str) -> str:
    """The tag on every kernel object of one CNI attachment: ``cni:<containerID>:<ifname>:<network>``.

    It always fits an nft comment (with an ifname under 16 bytes), so the kernel keeps it whole
    and GC reads the network back from it. A container ID too long for that is written as its
    first CID_SHOWN characters, ``#`` and a digest of the whole ID; GC recomputes the same tag
    from the valid-attachments list. Deterministic, and distinct attachments get distinct tags.
    """
    net = network_field(network)
    plain = f"{CNI_PREFIX}{container_id}:{ifname}:{net}"
    if len(plain.encode("utf-8", "surrogatepass")) <= MAX_COMMENT and CNI_NAME_RE.fullmatch(container_id):
        return plain
    cid = container_id[:CID_SHOWN] + DIGEST_MARK + _digest(container_id, CID_DIGEST_HEX)
    return f"{CNI_PREFIX}{cid}:{ifname}:{net}"


def cni_legacy_owner(container_id: str, ifname: str) -> str:
    """The tag portwright-cni wrote before it recorded the network, ``cni:<containerID>:<ifname>``
    (its nft comment is hashed when too long). DEL and CHECK still recognise it."""
    return f"{CNI_PREFIX}{container_id}:{ifname}"


def network_tag(net_name: str) -> str:
    """The comment of network ``net_name``'s rules and bridge element: ``pw-net:<name>``."""
    tag = NET_TAG_PREFIX + net_name
    if not net_name or len(tag.encode()) > MAX_COMMENT or not net_name.isprintable():
        raise BadInput(
            f"network name {net_name!r} cannot tag firewall rules; "
            f"use a printable name of at most {MAX_COMMENT - len(NET_TAG_PREFIX)} bytes"
        )
    return tag


def nft_comment(owner: str) -> str:
    """The comment that marks ``owner``'s elements and rules: the owner itself, or a stable hash.

    nft comments hold at most 128 bytes. A CNI owner fits; anything longer is replaced by ``h:``
    and the SHA-256 of the owner (66 bytes), deterministically, so unpublish finds it again from
    the same owner string. Tags that would read back as a network, base or hashed tag are refused.
    """
    if not owner or not owner.isprintable():
        raise BadInput(
            f"firewall owner tag {owner!r} is empty or not printable; "
            "use 'pw:<sandbox id>' or 'cni:<container id>:<ifname>:<network>'"
        )
    if owner.startswith((NET_TAG_PREFIX, BASE_TAG, HASHED_PREFIX)):
        raise BadInput(
            f"firewall owner tag {owner!r} uses a reserved prefix "
            f"({NET_TAG_PREFIX!r}, {BASE_TAG!r}, {HASHED_PREFIX!r}); "
            "use 'pw:<sandbox id>' or 'cni:<container id>:<ifname>:<network>'"
        )
    if len(owner.encode()) <= MAX_COMMENT:
        return owner
    return HASHED_PREFIX + hashlib.sha256(owner.encode()).hexdigest()


# ------------------------------------------------------------------------------------------------
# Reading tags back
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CniOwner:
    """The fields of a CNI tag read back from the kernel."""

    container: str  # the container ID, or "<first 12>#<digest>" for a long one
    ifname: str
    network: str | None  # network_field() of its network; None for a legacy tag

    @property
    def shown_id(self) -> str:
        """The container ID as far as the tag shows it, for messages."""
        return self.container.split(DIGEST_MARK, 1)[0][:CID_SHOWN]


def parse_cni_owner(tag: str) -> CniOwner | None:
    """The fields of a tag from cni_owner or cni_legacy_owner; None for any other tag (a
    sandbox's, a hashed ``h:`` one, a malformed ``cni:`` one)."""
    if not tag.startswith(CNI_PREFIX):
        return None
    parts = tag[len(CNI_PREFIX) :].split(":")
    if not all(parts):
        return None
    if len(parts) == 2:
        return CniOwner(parts[0], parts[1], None)
    if len(parts) == 3:
        return CniOwner(parts[0], parts[1], parts[2])
    return None


@dataclass(frozen=True, slots=True)
class Owner:
    """Any tag read back from the kernel, by kind."""

    kind: OwnerKind
    tag: str
    # sandbox: its id; cni: what follows "cni:"; network: its name; base: the reason;
    # hashed: the digest; other: the whole tag
    name: str
    cni: CniOwner | None = None  # the fields of a well-formed CNI tag

    @property
    def is_owner(self) -> bool:
        """Whether the tag names an owner (what ``unpublish`` removes), not a network or the base."""
        return self.kind not in ("network", "base")


def parse_owner(tag: str) -> Owner:
    """Tell a sandbox, CNI, network, base or hashed tag apart (``other`` for anything else)."""
    if tag.startswith(SANDBOX_PREFIX):
        return Owner("sandbox", tag, tag[len(SANDBOX_PREFIX) :])
    if tag.startswith(CNI_PREFIX):
        return Owner("cni", tag, tag[len(CNI_PREFIX) :], parse_cni_owner(tag))
    if tag.startswith(NET_TAG_PREFIX):
        return Owner("network", tag, tag[len(NET_TAG_PREFIX) :])
    if tag.startswith(BASE_TAG):
        return Owner("base", tag, tag[len(BASE_TAG) :].lstrip(": "))
    if tag.startswith(HASHED_PREFIX):
        return Owner("hashed", tag, tag[len(HASHED_PREFIX) :])
    return Owner("other", tag, tag)
