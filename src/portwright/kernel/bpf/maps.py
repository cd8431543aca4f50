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

    # The batch commands (Linux 5.6+) move thousands of elements per syscall. union bpf_attr's
    # batch struct: in_batch @0, out_batch @8, keys @16, values @24, count @32, map_fd @36,
    # elem_flags @40. Where a kernel refuses them, the per-element calls do the same work.
    _NO_BATCH = (22, 95, 524)  # EINVAL, EOPNOTSUPP, ENOTSUPP

    def items_batch(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
        """Every (key, value), read BPF_MAP_LOOKUP_BATCH-wise (falls back to ``items``)."""
        ks, vs = self.key_size, self.value_size
        keys = ctypes.create_string_buffer(ks * chunk)
        values = ctypes.create_string_buffer(vs * chunk)
        token = ctypes.create_string_buffer(max(8, ks))
        nxt = ctypes.create_string_buffer(max(8, ks))
        out: list[tuple[bytes, bytes]] = []
        first = True
        while True:
            fields: list[tuple[int, str, int | bytes]] = [
                (8, "Q", addr(nxt)), (16, "Q", addr(keys)), (24, "Q", addr(values)),
                (32, "I", chunk), (36, "I", self.fd),
            ]  # fmt: skip
            if not first:
                fields.append((0, "Q", addr(token)))
            buf = attr(*fields)
            try:
                bpf(c.BPF_MAP_LOOKUP_BATCH, buf, f"read map {self.name}")
                done = False
            except BpfError as e:
                if e.errno in self._NO_BATCH and first:
                    return self.items()
                if e.errno != 2:  # ENOENT: this was the last chunk
                    raise
                done = True
            n = int.from_bytes(buf.raw[32:36], "little")
            raw_k, raw_v = keys.raw, values.raw
            out += [(raw_k[i * ks : (i + 1) * ks], raw_v[i * vs : (i + 1) * vs]) for i in range(n)]
            if done:
                return out
            ctypes.memmove(token, nxt, len(nxt))
            first = False

    def update_batch(self, items: list[tuple[bytes, bytes]], flags: int = c.BPF_ANY) -> None:
        """Insert or replace many elements in one BPF_MAP_UPDATE_BATCH (falls back to ``update``)."""
        if not items:
            return
        if any(len(k) != self.key_size or len(v) != self.value_size for k, v in items):
            raise ValueError(f"map {self.name}: a key or value has the wrong size")
        keys = ctypes.create_string_buffer(b"".join(k for k, _ in items), self.key_size * len(items))
        values = ctypes.create_string_buffer(b"".join(v for _, v in items), self.value_size * len(items))
        buf = attr(
            (16, "Q", addr(keys)),
            (24, "Q", addr(values)),
            (32, "I", len(items)),
            (36, "I", self.fd),
            (40, "Q", flags),
        )
        try:
            bpf(c.BPF_MAP_UPDATE_BATCH, buf, f"update map {self.name}")
        except BpfError as e:
            if e.errno not in self._NO_BATCH:
                raise
            for k, v in items:
                self.update(k, v, flags)

    def delete_batch(self, keys: list[bytes]) -> None:
        """Remove many keys in one BPF_MAP_DELETE_BATCH; keys already gone are skipped."""
        if not keys:
            return
        raw = ctypes.create_string_buffer(b"".join(keys), self.key_size * len(keys))
        buf = attr((16, "Q", addr(raw)), (32, "I", len(keys)), (36, "I", self.fd))
        try:
            bpf(c.BPF_MAP_DELETE_BATCH, buf, f"delete from map {self.name}")
        except BpfError as e:
            if e.errno not in (2, *self._NO_BATCH):
                raise
            for k in keys:  # stopped at a missing key (ENOENT) or no batch support
                self.delete(k)

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
