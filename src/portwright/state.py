"""Persistent state: what portwright created and who owns it (SQLite, WAL, one transaction per change).

Intent is recorded before kernel objects are created, so that a reconcile pass can remove the
leftovers of a sandbox whose supervisor died at any point. Lives under /run/portwright (tmpfs:
a reboot clears the kernel objects and the state together); PORTWRIGHT_STATE_DIR overrides it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import Conflict, NeedRoot, NotFound, PortwrightError
from .kernel.proc import comm
from .model import Mapping, Network, Sandbox, address_text
from .spec import SandboxSpec

DEFAULT_DIR = "/run/portwright"
SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    name TEXT PRIMARY KEY, bridge TEXT NOT NULL UNIQUE,
    subnet4 TEXT NOT NULL UNIQUE, gateway4 TEXT NOT NULL,
    subnet6 TEXT UNIQUE, gateway6 TEXT, internal INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, network TEXT NOT NULL,
    netns TEXT, veth TEXT, ip4 TEXT, ip6 TEXT, mac TEXT,
    publish_mode TEXT NOT NULL DEFAULT 'nat', status TEXT NOT NULL,
    supervisor_pid INTEGER, supervisor_start INTEGER, cmd_pid INTEGER, cmd_start INTEGER,
    cmd TEXT NOT NULL, spec TEXT NOT NULL DEFAULT '{}', exit_code INTEGER,
    log_path TEXT, created REAL NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS sandbox_ip4 ON sandboxes(network, ip4) WHERE ip4 IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS sandbox_ip6 ON sandboxes(network, ip6) WHERE ip6 IS NOT NULL;
CREATE TABLE IF NOT EXISTS ports (
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    proto TEXT NOT NULL, host_ip TEXT NOT NULL, host_port INTEGER NOT NULL,
    container_ip TEXT NOT NULL, container_port INTEGER NOT NULL);
"""
# An index on ports(proto, host_port) that no query used; it made writing a 10,000-port sandbox's
# 20,000 rows a third slower (#11). Dropped from files that have it.
DROPPED = ("DROP INDEX IF EXISTS ports_by_port",)

#: (column, declaration) added to ``sandboxes`` since the first release, applied in order.
MIGRATIONS = (
    ("cmd_start", "INTEGER"),
    ("finished", "REAL"),  # when CMD exited: "Exited (0) 3 minutes ago"
    ("last_addrs", "TEXT"),  # JSON {"ip4", "ip6"} it had when it exited: `start` asks for them again
    ("started", "REAL"),  # when CMD last started (run or `start`): "Up 3 seconds", State.StartedAt
)

# Mappings already decoded, by their row: one command reads a sandbox back many times (reconcile,
# restore, teardown, each `_serving` check), and decoding a 10,000-port sandbox's 20,000 rows each
# time was most of `run -d` and `rm -f` at that size (#11). Mappings are frozen, so sharing is safe.
_MAPPING_MEMO: dict[tuple[Any, ...], Mapping] = {}
_MAPPING_MEMO_MAX = 200_000  # rows; past it the memo starts again (a few MB at most)


def _mapping(row: tuple[Any, ...]) -> Mapping:
    m = _MAPPING_MEMO.get(row)
    if m is None:
        if len(_MAPPING_MEMO) >= _MAPPING_MEMO_MAX:
            _MAPPING_MEMO.clear()
        m = _MAPPING_MEMO[row] = Mapping.from_row(*row)
    return m


#: ``PRAGMA user_version`` of the files this release writes. An older file is migrated; a newer one
#: (written by a later release) is refused rather than misread.
SCHEMA_VERSION = 1
# sqlite3.h primary result codes meaning "this file is damaged", not "busy" or "locked".
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
#: Left beside the database while it must be rebuilt from the kernel (``rebuild.py``); holds the
#: path the damaged file was moved to.
REBUILD_MARKER = "state.db.rebuild"


def state_dir() -> str:
    return os.environ.get("PORTWRIGHT_STATE_DIR", DEFAULT_DIR)


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    """A sandbox row: the model plus its lifecycle fields."""

    sandbox: Sandbox
    status: str  # creating | running | exited | removing
    supervisor_pid: int | None
    supervisor_start: int | None
    cmd_pid: int | None
    cmd_start: int | None  # CMD's start time: a recorded pid is only trusted while it matches
    cmd: tuple[str, ...]
    spec: SandboxSpec
    exit_code: int | None
    log_path: str | None
    created: float
    finished: float | None = None  # when CMD exited (None while it runs, or for older records)
    last_addrs: str | None = None  # the addresses an exited sandbox had (JSON), for `start`
    started: float | None = None  # when CMD last started (None before it has, or for older records)

    @property
    def id(self) -> str:
        return self.sandbox.id

    @property
    def name(self) -> str:
        return self.sandbox.name


def _damaged(e: sqlite3.DatabaseError) -> bool:
    """A file that is not a database, or a damaged one (not a busy or locked database)."""
    return getattr(e, "sqlite_errorcode", None) in (SQLITE_CORRUPT, SQLITE_NOTADB)


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3, the state, comes first)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: distinguishes a live supervisor from a reused pid."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def pid_alive(pid: int | None, start: int | None) -> bool:
    """Is pid running (not a zombie) and, given start, still the same process?"""
    fields = _proc_stat(pid) if pid else None
    if not fields or fields[0] == "Z":
        return False
    return start is None or int(fields[19]) == start


def being_reaped(pid: int | None) -> bool:
    """Has pid exited, with its parent — the fork server — about to collect its exit status and
    tear its sandbox down? (A zombie whose parent is ``pw-zygote``.) Others must leave it be."""
    fields = _proc_stat(pid) if pid else None
    return fields is not None and fields[0] == "Z" and comm(int(fields[1])) == "pw-zygote"


def _spec(text: str, cmd: str) -> SandboxSpec:
    """The stored request, read back into its type; a row too damaged to parse still lists."""
    try:
        return SandboxSpec.from_json(json.loads(text))
    except (PortwrightError, ValueError, KeyError, TypeError):
        return SandboxSpec(cmd=tuple(json.loads(cmd)) or ("?",), extra={"unreadable": True})


# Secrets live here: CMD's output (which may print its -e DB_PASSWORD=...), the database (specs
# with their environment) and the control sockets. Docker keeps its equivalents root-only too.
DIR_MODE = 0o700
FILE_MODE = 0o600


def secure_dir(directory: str) -> None:
    """Make the state directory root-only, and fix what an older release left readable (0755
    directories, 0644 logs and database): the directory and its logs/ctl subdirectories 0700,
    every file in logs/, the database files and the control sockets 0600. Idempotent; files
    another process is writing keep their descriptors, only the mode changes."""
    for sub in ("", "logs", "ctl"):
        _tighten(os.path.join(directory, sub) if sub else directory, DIR_MODE)
    for sub, keep in (("logs", None), ("ctl", ".sock"), ("", "state.db")):
        path = os.path.join(directory, sub) if sub else directory
        try:
            names = os.listdir(path)
        except OSError:
            continue
        for name in names:
            if keep is None or (name.endswith(keep) if keep == ".sock" else name.startswith(keep)):
                _tighten(os.path.join(path, name), FILE_MODE)


def _tighten(path: str, mode: int) -> None:
    try:
        st = os.lstat(path)
        if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & ~mode:
            os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
    except OSError:
        pass  # gone meanwhile, or not ours to change (not root): nothing to fix here


def control_socket_path(state_dir: str, sid: str) -> str:
    """A sandbox's control socket (served by its Python supervisor)."""
    return os.path.join(state_dir, "ctl", f"{sid}.sock")


def grace_path(state_dir: str, sid: str) -> str:
    """Where ``stop -t N`` leaves the grace period before it sends SIGTERM to the supervisor."""
    return os.path.join(state_dir, "ctl", f"{sid}.grace")


def write_grace(state_dir: str, sid: str, seconds: float) -> None:
    os.makedirs(os.path.dirname(grace_path(state_dir, sid)), exist_ok=True)
    with open(grace_path(state_dir, sid), "w") as f:
        f.write(str(seconds))


def read_grace(state_dir: str, sid: str, default: float) -> float:
    try:
        with open(grace_path(state_dir, sid)) as f:
            return max(0.0, float(f.read().strip()))
    except (OSError, ValueError):
        return default


class State:
    """A handle on the state database. Cheap to create; every method is one transaction."""

    def __init__(self, directory: str | None = None) -> None:
        self.dir = directory or state_dir()
        try:
            os.makedirs(self.dir, mode=DIR_MODE, exist_ok=True)
            os.makedirs(os.path.join(self.dir, "logs"), mode=DIR_MODE, exist_ok=True)
        except PermissionError:
            raise NeedRoot(f"writing state under {self.dir}") from None
        secure_dir(self.dir)
        if not os.access(self.dir, os.R_OK | os.W_OK | os.X_OK):  # root-only since issue 13
            raise NeedRoot(f"reading state under {self.dir}")
        self.path = os.path.join(self.dir, "state.db")
        self._ports_cache: dict[str, tuple[Mapping, ...]] = {}  # sandbox id -> its mappings
        self._ports_version: object = None  # PRAGMA data_version when the cache was filled
        try:
            self._open()
        except sqlite3.DatabaseError as e:
            if not _damaged(e):
                raise
            self._set_aside(e)
            self._open()

    def _open(self) -> None:
        if not os.path.exists(self.path):  # created root-only; SQLite gives -wal/-shm its mode
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA busy_timeout=30000")
            version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise PortwrightError(
                    f"state database {self.path} has schema version {version}, newer than this "
                    f"portwright knows ({SCHEMA_VERSION}); use the newer portwright that wrote it, "
                    "or move the file aside to rebuild it from the kernel"
                )
            with self.tx():
                for stmt in SCHEMA.strip().split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)
                self._migrate()
                for stmt in DROPPED:
                    self.db.execute(stmt)
                if version < SCHEMA_VERSION:
                    self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self.db.close()
            raise

    def _set_aside(self, err: sqlite3.DatabaseError) -> None:
        """Move a damaged database (and its WAL) aside with a timestamp, once, under a lock, and
        leave the marker that makes the next command rebuild the records from the kernel."""
        with open(os.path.join(self.dir, "state.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:  # another process may have done it meanwhile
                self._open()
                self.db.close()
                return
            except sqlite3.DatabaseError as again:
                if not _damaged(again):
                    raise
            aside = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.path + suffix, aside + suffix)
            with open(os.path.join(self.dir, REBUILD_MARKER), "w") as f:
                f.write(f"{aside}\n{err}\n")
            os.chmod(os.path.join(self.dir, REBUILD_MARKER), FILE_MODE)

    def rebuild_pending(self) -> tuple[str, str] | None:
        """(where the damaged file went, what was wrong with it) while a rebuild is due."""
        try:
            with open(os.path.join(self.dir, REBUILD_MARKER)) as f:
                aside, _, why = f.read().partition("\n")
        except OSError:
            return None
        return aside.strip(), why.strip()

    def rebuild_done(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, REBUILD_MARKER))

    def _migrate(self) -> None:
        """Columns added after a state file may have been written by an older release."""
        have = {r["name"] for r in self.db.execute("PRAGMA table_info(sandboxes)")}
        for col, decl in MIGRATIONS:
            if col not in have:
                self.db.execute(f"ALTER TABLE sandboxes ADD COLUMN {col} {decl}")

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: one writer at a time, so allocation (IPs, ports) is race-free."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            self._ports_cache.clear()  # it may hold rows of the transaction that was undone
            raise
        else:
            self.db.execute("COMMIT")

    # ---- networks
    def add_network(self, net: Network) -> None:
        try:
            self.db.execute(
                "INSERT INTO networks VALUES (?,?,?,?,?,?,?,?)",
                (
                    net.name,
                    net.bridge,
                    str(net.subnet4),
                    str(net.gateway4),
                    str(net.subnet6) if net.subnet6 else None,
                    str(net.gateway6) if net.gateway6 else None,
                    int(net.internal),
                    time.time(),
                ),
            )
        except sqlite3.IntegrityError:
            raise Conflict(
                f"network {net.name!r} (or its bridge/subnet) already exists; pick another name or subnet"
            ) from None

    @staticmethod
    def _network(row: sqlite3.Row) -> Network:
        return Network(
            name=row["name"],
            bridge=row["bridge"],
            subnet4=ipaddress.IPv4Network(row["subnet4"]),
            gateway4=ipaddress.IPv4Address(row["gateway4"]),
            subnet6=ipaddress.IPv6Network(row["subnet6"]) if row["subnet6"] else None,
            gateway6=ipaddress.IPv6Address(row["gateway6"]) if row["gateway6"] else None,
            internal=bool(row["internal"]),
        )

    def networks(self) -> list[Network]:
        return [self._network(r) for r in self.db.execute("SELECT * FROM networks ORDER BY created")]

    def network(self, name: str) -> Network:
        row = self.db.execute("SELECT * FROM networks WHERE name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"network {name!r} not found; list networks with 'portwright network ls'")
        return self._network(row)

    def find_network(self, name: str) -> Network | None:
        row = self.db.execute("SELECT * FROM networks WHERE name=?", (name,)).fetchone()
        return self._network(row) if row else None

    def remove_network(self, name: str) -> None:
        self.db.execute("DELETE FROM networks WHERE name=?", (name,))

    # ---- sandboxes
    def _ports_of(self, sid: str) -> tuple[Mapping, ...]:
        """A sandbox's mappings, read once per change: one command reads its sandboxes many
        times (reconcile, restore, teardown, ``ps``), and 20,000 rows cost a tenth of a second a
        time (#11). ``PRAGMA data_version`` moves when another connection commits; this one's
        own writes drop what they change (``set_ports``, ``remove_sandbox``, a rollback)."""
        version = self.db.execute("PRAGMA data_version").fetchall()[0][0]  # all rows: the statement ends
        if version != self._ports_version:
            self._ports_cache.clear()
            self._ports_version = version
        maps = self._ports_cache.get(sid)
        if maps is None:
            cur = self.db.cursor()
            cur.row_factory = None  # plain tuples: the memo's keys, with no Row to build and copy
            rows = cur.execute(
                "SELECT proto, host_ip, host_port, container_ip, container_port FROM ports "
                "WHERE sandbox_id=? ORDER BY rowid",
                (sid,),
            ).fetchall()
            known = _MAPPING_MEMO.get
            maps = self._ports_cache[sid] = tuple(known(r) or _mapping(r) for r in rows)
        return maps

    def port_rows(self, sid: str) -> list[tuple[str, str, int, str, int]]:
        """A sandbox's port rows as stored (proto, host address, host port, sandbox address,
        sandbox port), undecoded: enough to tell whether they changed (``verified.row_digest``)."""
        cur = self.db.cursor()
        cur.row_factory = None
        return cur.execute(
            "SELECT proto, host_ip, host_port, container_ip, container_port FROM ports "
            "WHERE sandbox_id=? ORDER BY rowid",
            (sid,),
        ).fetchall()

    def _record(self, row: sqlite3.Row, ports: bool = True) -> SandboxRecord:
        maps = self._ports_of(row["id"]) if ports else ()
        sb = Sandbox(
            id=row["id"],
            name=row["name"],
            network=row["network"],
            netns=row["netns"],
            veth=row["veth"],
            ip4=ipaddress.IPv4Address(row["ip4"]) if row["ip4"] else None,
            ip6=ipaddress.IPv6Address(row["ip6"]) if row["ip6"] else None,
            mac=row["mac"],
            publish_mode=row["publish_mode"],
            mappings=maps,
        )
        return SandboxRecord(
            sandbox=sb,
            status=row["status"],
            supervisor_pid=row["supervisor_pid"],
            supervisor_start=row["supervisor_start"],
            cmd_pid=row["cmd_pid"],
            cmd_start=row["cmd_start"],
            cmd=tuple(json.loads(row["cmd"])),
            spec=_spec(row["spec"], row["cmd"]),
            exit_code=row["exit_code"],
            log_path=row["log_path"],
            created=row["created"],
            finished=row["finished"],
            last_addrs=row["last_addrs"],
            started=row["started"],
        )

    def insert_sandbox(
        self,
        sb: Sandbox,
        cmd: list[str],
        spec: dict[str, Any],
        status: str = "creating",
        log_path: str | None = None,
    ) -> None:
        try:
            self.db.execute(
                "INSERT INTO sandboxes (id, name, network, netns, veth, ip4, ip6, mac, publish_mode, status,"
                " cmd, spec, log_path, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    sb.id,
                    sb.name,
                    sb.network,
                    sb.netns,
                    sb.veth,
                    str(sb.ip4) if sb.ip4 else None,
                    str(sb.ip6) if sb.ip6 else None,
                    sb.mac,
                    sb.publish_mode,
                    status,
                    json.dumps(cmd),
                    json.dumps(spec),
                    log_path,
                    time.time(),
                ),
            )
        except sqlite3.IntegrityError as e:
            if "name" in str(e):
                raise Conflict(
                    f"a sandbox named {sb.name!r} already exists; remove it with "
                    f"'portwright rm -f {sb.name}' or choose another --name"
                ) from None
            raise

    def update_sandbox(self, sid: str, **fields: object) -> None:
        if not fields:
            return
        cols = ", ".join(f"{k}=?" for k in fields)
        vals = [
            str(v) if isinstance(v, ipaddress.IPv4Address | ipaddress.IPv6Address) else v
            for v in fields.values()
        ]
        self.db.execute(f"UPDATE sandboxes SET {cols} WHERE id=?", (*vals, sid))

    def set_ports(self, sid: str, mappings: list[Mapping]) -> None:
        self._ports_cache.pop(sid, None)
        self.db.execute("DELETE FROM ports WHERE sandbox_id=?", (sid,))
        rows = [
            (m.proto, address_text(m.host_ip), m.host_port, address_text(m.container_ip), m.container_port)
            for m in mappings
        ]
        self.db.executemany("INSERT INTO ports VALUES (?,?,?,?,?,?)", [(sid, *r) for r in rows])
        # Whoever writes them reads them back next (``Engine.started``): the rows are these
        # mappings, so they need no decoding. The memo is by row, and sharing frozen objects is safe.
        if len(_MAPPING_MEMO) + len(rows) < _MAPPING_MEMO_MAX:
            _MAPPING_MEMO.update(zip(rows, mappings, strict=True))
        self._ports_cache[sid] = tuple(mappings)  # rowid order is this order

    def sandboxes(self, ports: bool = True) -> list[SandboxRecord]:
        """Every sandbox. ``ports`` False: without their mappings (``mappings`` is empty), for
        callers that need names, addresses and states only: a 10,000-port sandbox's 20,000 rows
        are then not read (#11). Never hand such a record to teardown."""
        return [self._record(r, ports) for r in self.db.execute("SELECT * FROM sandboxes ORDER BY created")]

    def find_sandbox(self, name_or_id: str) -> SandboxRecord | None:
        row = self.db.execute(
            "SELECT * FROM sandboxes WHERE name=? OR id=?", (name_or_id, name_or_id)
        ).fetchone()
        if row is None and len(name_or_id) >= 3:
            rows = self.db.execute("SELECT * FROM sandboxes WHERE id LIKE ?", (name_or_id + "%",)).fetchall()
            row = rows[0] if len(rows) == 1 else None
        return self._record(row) if row else None

    def name_taken(self, name: str) -> bool:
        """Exactly this name (an id prefix is a lookup convenience, never a clash)."""
        return self.db.execute("SELECT 1 FROM sandboxes WHERE name=?", (name,)).fetchone() is not None

    def sandbox(self, name_or_id: str) -> SandboxRecord:
        rec = self.find_sandbox(name_or_id)
        if rec is None:
            raise NotFound(f"no sandbox named {name_or_id!r}; list them with 'portwright ps -a'")
        return rec

    def record_exit(self, supervisor_pid: int, exit_code: int) -> None:
        """CMD's exit code, known to whoever reaped the supervisor, before teardown starts."""
        self.db.execute(
            "UPDATE sandboxes SET exit_code=? WHERE supervisor_pid=? AND status!='exited'",
            (exit_code, supervisor_pid),
        )

    def remove_sandbox(self, sid: str) -> None:
        self._ports_cache.pop(sid, None)
        self.db.execute("DELETE FROM ports WHERE sandbox_id=?", (sid,))
        self.db.execute("DELETE FROM sandboxes WHERE id=?", (sid,))

    def all_ports(self) -> list[tuple[str, Mapping]]:
        return [
            (r["sandbox_id"], Mapping.from_json(dict(r)))
            for r in self.db.execute(
                "SELECT sandbox_id, proto, host_ip, host_port, container_ip, container_port FROM ports"
            )
        ]
