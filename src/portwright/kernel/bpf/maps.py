"""BPF maps: create, update, delete, lookup, iterate, pin and reopen (``Map``)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator

from . import consts as c
from .syscall import BpfError, addr, attr, bpf


def _name(name: str) -> bytes:
    """An object name for the kernel: at most 15 bytes of [A-Za-z0-9_.]."""
    clean = "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in name)
    return clean.encode()[:15]


def pin_fd(fd: int, path: str, what: str) -> None:
    p = ctypes.create_string_buffer(os.fsencode(path))
    bpf(c.BPF_OBJ_PIN, attr((0, "Q", addr(p)), (8, "I", fd)), f"pin {what} at {path}")


def get_pinned(path: str, what: str) -> int:
    p = ctypes.create_string_buffer(os.fsencode(path))
    return bpf(c.BPF_OBJ_GET, attr((0, "Q", addr(p))), f"open pinned {what} {path}")


class Map:
    """A BPF map by fd, with its key and value sizes."""

    def __init__(self, fd: int, key_size: int, value_size: int, name: str = "") -> None:
        self.fd = fd
        self.key_size = key_size
        self.value_size = value_size
        self.name = name

    @classmethod
    def create(
        cls, map_type: int, key_size: int, value_size: int, max_entries: int, name: str, flags: int = 0
    ) -> Map:
        buf = attr(
            (0, "I", map_type),
            (4, "I", key_size),
            (8, "I", value_size),
            (12, "I", max_entries),
            (16, "I", flags),
            (28, "16s", _name(name)),
        )
        return cls(bpf(c.BPF_MAP_CREATE, buf, f"create map {name}"), key_size, value_size, name)

    @classmethod
    def open_pinned(cls, path: str) -> Map:
        """Reopen a pinned map; its sizes come from BPF_OBJ_GET_INFO_BY_FD (struct bpf_map_info)."""
        fd = get_pinned(path, "map")
        info = ctypes.create_string_buffer(88)
        bpf(
            c.BPF_OBJ_GET_INFO_BY_FD,
            attr((0, "I", fd), (4, "I", len(info)), (8, "Q", addr(info))),
            f"map info {path}",
        )
        # struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags, name[16]
        key_size = int.from_bytes(info.raw[8:12], "little")
        value_size = int.from_bytes(info.raw[12:16], "little")
        return cls(fd, key_size, value_size, os.path.basename(path))

    def _elem(
        self, cmd: int, key: bytes, value: ctypes.Array[ctypes.c_char] | None, flags: int, op: str
    ) -> int:
        if len(key) != self.key_size:
            raise ValueError(f"map {self.name}: key is {len(key)} bytes, expected {self.key_size}")
        k = ctypes.create_string_buffer(key, len(key))
        fields: list[tuple[int, str, int | bytes]] = [(0, "I", self.fd), (8, "Q", addr(k)), (24, "Q", flags)]
        if value is not None:
            fields.append((16, "Q", addr(value)))
        return bpf(cmd, attr(*fields), f"{op} in map {self.name}")

    def update(self, key: bytes, value: bytes, flags: int = c.BPF_ANY) -> None:
        if len(value) != self.value_size:
            raise ValueError(f"map {self.name}: value is {len(value)} bytes, expected {self.value_size}")
        self._elem(
            c.BPF_MAP_UPDATE_ELEM, key, ctypes.create_string_buffer(value, len(value)), flags, "update"
        )

    def delete(self, key: bytes) -> bool:
        """Remove key; False when it was not there."""
        try:
            self._elem(c.BPF_MAP_DELETE_ELEM, key, None, 0, "delete")
        except BpfError as e:
            if e.errno == 2:  # ENOENT
                return False
            raise
        return True

    def lookup(self, key: bytes) -> bytes | None:
        v = ctypes.create_string_buffer(self.value_size)
        try:
            self._elem(c.BPF_MAP_LOOKUP_ELEM, key, v, 0, "lookup")
        except BpfError as e:
            if e.errno == 2:
                return None
            raise
        return v.raw

    def keys(self) -> Iterator[bytes]:
        """Every key (BPF_MAP_GET_NEXT_KEY from no key; a key deleted meanwhile restarts the walk)."""
        nxt = ctypes.create_string_buffer(self.key_size)
        cur: ctypes.Array[ctypes.c_char] | None = None
        while True:
            fields: list[tuple[int, str, int | bytes]] = [(0, "I", self.fd), (16, "Q", addr(nxt))]
            if cur is not None:
                fields.append((8, "Q", addr(cur)))
            try:
                bpf(c.BPF_MAP_GET_NEXT_KEY, attr(*fields), f"next key in map {self.name}")
            except BpfError as e:
                if e.errno == 2:
                    return
                raise
            key = nxt.raw
            yield key
            cur = ctypes.create_string_buffer(key, self.key_size)

    def items(self) -> list[tuple[bytes, bytes]]:
        out = []
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                out.append((k, v))
        return out

    def pin(self, path: str) -> None:
        pin_fd(self.fd, path, f"map {self.name}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
