"""The SQLite state store, the default: one file shared by every worker of one host.

`state: /var/lib/serving-proxy/state.sqlite3` (relative: beside the config) or `:memory:`.
The file and its -wal/-shm/-journal companions are readable by their owner only (0600):
the audit log names who changed what. The Protocol it keeps is `store.StateStore`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import AsyncGenerator, Callable, Collection
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from proxy import jsoncodec
from proxy.cutover.store import (
    DEPLOYMENT_SECRET_BYTES,
    AuditEntry,
    FencingError,
    Lease,
    StateError,
    Stored,
    encode_document,
)

T = TypeVar("T")
MEMORY = ":memory:"
# Owner read and write only: the state and its audit log are nobody else's business.
STATE_FILE_MODE = 0o600
SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")
# Opening a file others open at the same moment is tried again this long, this often.
OPEN_TIMEOUT_S = 5.0
OPEN_RETRY_S = 0.05
LOGGER = logging.getLogger("serving_proxy.cutover")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY, revision INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, entry TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_model ON audit (model, id);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0);
"""
# The rollout lease (one row at most) and the replicas' heartbeat records, with their
# expiry in epoch seconds: every process of one host shares its clock.
_FLEET_SCHEMA = """
CREATE TABLE IF NOT EXISTS lease (
    name TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS replicas (
    id TEXT PRIMARY KEY, record TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS stats (
    id TEXT PRIMARY KEY, record TEXT NOT NULL, expires_at REAL NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('fencing', 0);
"""
ROLLOUT_LEASE = "rollout"
# The tables of records that expire (the replicas' heartbeats, their statistics): names
# from this set only, never from input, go into the statements below.
_EXPIRING = frozenset({"replicas", "stats"})


def _put(
    table: str, key: str, record: dict[str, Any], ttl_s: float, conn: sqlite3.Connection
) -> None:
    assert table in _EXPIRING
    conn.execute(
        f"INSERT OR REPLACE INTO {table} (id, record, expires_at) VALUES (?, ?, ?)",
        (key, encode_document(record), time.time() + ttl_s),
    )


def _drop(table: str, key: str, conn: sqlite3.Connection) -> None:
    assert table in _EXPIRING
    conn.execute(f"DELETE FROM {table} WHERE id = ?", (key,))


def _live(table: str, conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """The records not yet expired, by key in key order (the expired ones deleted)."""
    assert table in _EXPIRING
    conn.execute(f"DELETE FROM {table} WHERE expires_at <= ?", (time.time(),))
    rows = conn.execute(f"SELECT id, record FROM {table} ORDER BY id").fetchall()
    return {str(row[0]): jsoncodec.loads(row[1]) for row in rows}


def _in_transaction(body: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """Run `body` in one transaction. IMMEDIATE takes the write lock first, so what it
    checks and what it writes are atomic across processes."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body(conn)
        conn.execute("COMMIT")
        return result
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _cas(
    model: str,
    expected: int | None,
    data: dict[str, Any],
    audit: AuditEntry,
    conn: sqlite3.Connection,
) -> bool:
    """Inside a transaction: the model's new revision and its audit entry iff the model
    is at `expected` (None: absent)."""
    row = conn.execute("SELECT revision FROM models WHERE name = ?", (model,)).fetchone()
    current = None if row is None else int(row[0])
    if current != expected:
        return False
    conn.execute(
        "INSERT INTO models (name, revision, data) VALUES (?, ?, ?) "
        "ON CONFLICT(name) DO UPDATE SET revision = excluded.revision, data = excluded.data",
        (model, (expected or 0) + 1, encode_document(data)),
    )
    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
    conn.execute(
        "INSERT INTO audit (model, entry) VALUES (?, ?)",
        (model, encode_document(audit.to_json())),
    )
    return True


def _held(conn: sqlite3.Connection, now: float) -> str | None:
    """Inside a transaction: the encoded lease held now, if any."""
    row = conn.execute(
        "SELECT value FROM lease WHERE name = ? AND expires_at > ?", (ROLLOUT_LEASE, now)
    ).fetchone()
    return None if row is None else str(row[0])


def _create_private(path: str) -> None:
    """Create the database file 0600 before SQLite does: `os.open`'s mode is applied at
    creation, so there is no moment when the file is readable by others, whatever the
    umask (the fchmod puts back owner bits a strict umask took away)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, STATE_FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, STATE_FILE_MODE)
    finally:
        os.close(fd)


def _tighten(path: str) -> None:
    """Take group and other access away from an existing state file, saying so: a file
    made by an older version (0644) or by hand keeps working, but not readable by all."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    try:
        os.chmod(path, mode & 0o700)
    except PermissionError:
        # Another user's file that this process may still use: say so, and go on.
        LOGGER.warning("state file %s is mode %04o and not ours to tighten", path, mode)
        return
    LOGGER.warning("state file %s was mode %04o; now %04o", path, mode, mode & 0o700)


class SqliteStore:
    """A SQLite file shared by every process on one host (WAL, so readers never block).

    sqlite3 blocks, so each call runs in a worker thread; one connection and a lock keep
    the calls of this process in order.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = f"sqlite:{path}"
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._windows_ready = False

    def _connect(self) -> None:
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        while True:
            try:
                self._conn = self._connected()
                return
            except sqlite3.OperationalError as exc:
                # Workers opening one new file at once: switching it to WAL and creating
                # the schema can meet another's lock in a way SQLite answers at once
                # (deadlock avoidance) instead of waiting out its busy timeout.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StateError(f"state: cannot open SQLite file {self.path}: {exc}") from None
                time.sleep(OPEN_RETRY_S)
            except (OSError, sqlite3.Error) as exc:
                raise StateError(f"state: cannot open SQLite file {self.path}: {exc}") from None

    def _connected(self) -> sqlite3.Connection:
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            _create_private(self.path)
        conn = sqlite3.connect(
            self.path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        try:
            if self.path != MEMORY:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            conn.executescript(_FLEET_SCHEMA)
        except BaseException:
            conn.close()
            raise
        if self.path != MEMORY:
            # SQLite made the -wal and -shm files by now; it copies the database's
            # mode, but a file left by an older version may still be looser.
            for suffix in SQLITE_COMPANIONS:
                _tighten(self.path + suffix)
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                if self._conn is None:
                    raise StateError(f"state: {self.description} is closed")
                try:
                    return fn(self._conn)
                except sqlite3.Error as exc:
                    raise StateError(f"state: {self.description}: {exc}") from exc

        return await anyio.to_thread.run_sync(call)

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._connect)

    async def generation(self) -> int:
        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            return int(row[0])

        return await self._run(read)

    async def load(self) -> dict[str, Stored]:
        def read(conn: sqlite3.Connection) -> dict[str, Stored]:
            rows = conn.execute("SELECT name, revision, data FROM models").fetchall()
            return {name: Stored(rev, jsoncodec.loads(data)) for name, rev, data in rows}

        return await self._run(read)

    async def write(
        self, model: str, expected: int | None, data: dict[str, Any], audit: AuditEntry
    ) -> bool:
        cas = partial(_cas, model, expected, data, audit)
        return await self._run(partial(_in_transaction, cas))

    async def audit(self, model: str | None = None, limit: int = 100) -> list[AuditEntry]:
        def read(conn: sqlite3.Connection) -> list[AuditEntry]:
            if model is None:
                rows = conn.execute(
                    "SELECT entry FROM audit ORDER BY id DESC LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT entry FROM audit WHERE model = ? ORDER BY id DESC LIMIT ?",
                    (model, limit),
                ).fetchall()
            return [AuditEntry.from_json(jsoncodec.loads(row[0])) for row in rows]

        return await self._run(read)

    async def deployment_secret(self) -> bytes:
        def get_or_create(conn: sqlite3.Connection) -> bytes:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS secrets "
                    "(name TEXT PRIMARY KEY, value TEXT NOT NULL)"
                )
                conn.execute(
                    "INSERT OR IGNORE INTO secrets (name, value) VALUES ('deployment', ?)",
                    (os.urandom(DEPLOYMENT_SECRET_BYTES).hex(),),
                )
                row = conn.execute("SELECT value FROM secrets WHERE name = 'deployment'").fetchone()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return bytes.fromhex(row[0])

        return await self._run(get_or_create)

    async def acquire_lease(self, replica_id: str, ttl_s: float) -> Lease | None:
        def take(conn: sqlite3.Connection) -> Lease | None:
            now = time.time()
            if _held(conn, now) is not None:
                return None
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'fencing'")
            row = conn.execute("SELECT value FROM meta WHERE key = 'fencing'").fetchone()
            lease = Lease(replica_id, now, int(row[0]))
            conn.execute(
                "INSERT OR REPLACE INTO lease (name, value, expires_at) VALUES (?, ?, ?)",
                (ROLLOUT_LEASE, lease.encode(), now + ttl_s),
            )
            return lease

        return await self._run(partial(_in_transaction, take))

    async def renew_lease(self, lease: Lease, ttl_s: float) -> bool:
        def renew(conn: sqlite3.Connection) -> bool:
            now = time.time()
            if _held(conn, now) != lease.encode():
                return False
            conn.execute(
                "UPDATE lease SET expires_at = ? WHERE name = ?", (now + ttl_s, ROLLOUT_LEASE)
            )
            return True

        return await self._run(partial(_in_transaction, renew))

    async def release_lease(self, lease: Lease) -> None:
        def release(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM lease WHERE name = ? AND value = ?", (ROLLOUT_LEASE, lease.encode())
            )

        await self._run(partial(_in_transaction, release))

    async def lease(self) -> Lease | None:
        def read(conn: sqlite3.Connection) -> Lease | None:
            value = _held(conn, time.time())
            return None if value is None else Lease.decode(value)

        return await self._run(read)

    async def write_fenced(
        self,
        model: str,
        expected: int | None,
        data: dict[str, Any],
        audit: AuditEntry,
        lease: Lease,
    ) -> bool:
        def fenced(conn: sqlite3.Connection) -> bool:
            if _held(conn, time.time()) != lease.encode():
                raise FencingError(self.description, lease)
            return _cas(model, expected, data, audit, conn)

        return await self._run(partial(_in_transaction, fenced))

    def changes(self) -> AsyncGenerator[int, None] | None:
        # Every process of a host polls the file; SQLite has no way to announce a write.
        return None

    async def heartbeat(self, replica_id: str, record: dict[str, Any], ttl_s: float) -> None:
        await self._run(
            partial(_in_transaction, partial(_put, "replicas", replica_id, record, ttl_s))
        )

    async def leave(self, replica_id: str) -> None:
        await self._run(partial(_in_transaction, partial(_drop, "replicas", replica_id)))

    async def replicas(self) -> list[dict[str, Any]]:
        rows = await self._run(partial(_in_transaction, partial(_live, "replicas")))
        return list(rows.values())

    async def publish_stats(self, member: str, document: dict[str, Any], ttl_s: float) -> None:
        await self._run(partial(_in_transaction, partial(_put, "stats", member, document, ttl_s)))

    async def drop_stats(self, member: str) -> None:
        await self._run(partial(_in_transaction, partial(_drop, "stats", member)))

    async def fleet_stats(self) -> dict[str, dict[str, Any]]:
        return await self._run(partial(_in_transaction, partial(_live, "stats")))

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await anyio.to_thread.run_sync(close)

    def _windows_table(self, conn: sqlite3.Connection) -> None:
        if not self._windows_ready:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS window_slots (model TEXT NOT NULL, key TEXT NOT NULL, "
                "start REAL NOT NULL, expires REAL NOT NULL, record TEXT NOT NULL, "
                "PRIMARY KEY (model, key))"
            )
            conn.execute(
                "CREATE INDEX IF NOT EXISTS window_slots_start ON window_slots (model, start)"
            )
            self._windows_ready = True

    async def publish_window(
        self, model: str, key: str, start: float, record: dict[str, Any], now: float, ttl_s: float
    ) -> None:
        def put(conn: sqlite3.Connection) -> None:
            self._windows_table(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT OR REPLACE INTO window_slots (model, key, start, expires, record) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (model, key, start, now + ttl_s, encode_document(record)),
                )
                conn.execute(
                    "DELETE FROM window_slots WHERE model = ? AND expires < ?", (model, now)
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self._run(put)

    async def window_slots(
        self, model: str, start: float, known: Collection[str]
    ) -> tuple[list[str], dict[str, dict[str, Any]]]:
        def read(conn: sqlite3.Connection) -> tuple[list[str], dict[str, dict[str, Any]]]:
            self._windows_table(conn)
            rows = conn.execute(
                "SELECT key FROM window_slots WHERE model = ? AND start >= ?", (model, start)
            ).fetchall()
            keys = [str(row[0]) for row in rows]
            records: dict[str, dict[str, Any]] = {}
            for key in keys:
                if key in known:
                    continue
                row = conn.execute(
                    "SELECT record FROM window_slots WHERE model = ? AND key = ?", (model, key)
                ).fetchone()
                if row is not None:
                    records[key] = jsoncodec.loads(row[0])
            return keys, records

        return await self._run(read)
