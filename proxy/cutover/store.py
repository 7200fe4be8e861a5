"""Where run-time cutover state lives: a SQLite file (default) or Redis, behind one Protocol.

I/O only, no policy: a store keeps one JSON document per model with a revision number,
a generation counter that moves on every change (what replicas poll, cheaply) and an
append-only audit log. Writes are compare-and-set on the model's revision, so two
replicas (or uvicorn workers) that change the same model at once cannot lose an update:
one wins, the other re-reads and decides again.

    state: /var/lib/serving-proxy/state.sqlite3   # one host, any number of workers
    state: redis://127.0.0.1:6379/0               # several replicas
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast
from urllib.parse import urlsplit

import anyio.to_thread

from proxy import jsoncodec

T = TypeVar("T")
DEFAULT_REDIS_PREFIX = "serving-proxy"
# The audit log keeps this many entries in Redis (SQLite keeps all: a file is cheap).
REDIS_AUDIT_KEPT = 10_000
MEMORY = ":memory:"


class StateError(Exception):
    """The state store cannot be opened or used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Stored:
    revision: int
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change: when, who (the admin token's configured name, or `rollout`), what, why."""

    at: float
    model: str
    actor: str
    action: str
    old: dict[str, Any] | None
    new: dict[str, Any]
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuditEntry:
        return cls(
            at=float(data["at"]),
            model=str(data["model"]),
            actor=str(data["actor"]),
            action=str(data["action"]),
            old=data.get("old"),
            new=data["new"],
            reason=str(data.get("reason", "")),
        )


class StateStore(Protocol):
    """What the cutover needs from a store; both implementations pass one test suite."""

    description: str

    async def open(self) -> None:
        """Connect and create what is missing. Raises `StateError`."""
        ...

    async def generation(self) -> int:
        """A number that changes whenever any model's state changes."""
        ...

    async def load(self) -> dict[str, Stored]:
        """Every model's state."""
        ...

    async def write(
        self, model: str, expected: int | None, data: dict[str, Any], audit: AuditEntry
    ) -> bool:
        """Store `data` as revision `expected + 1` iff the model is at `expected` (None:
        absent), with its audit entry, atomically. False: someone else changed it first."""
        ...

    async def audit(self, model: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest entries first, for one model or all."""
        ...

    async def aclose(self) -> None: ...


def _dump(obj: Any) -> str:
    return jsoncodec.dumps(obj).decode("utf-8")


# --- SQLite ----------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY, revision INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, entry TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_model ON audit (model, id);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0);
"""


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

    def _connect(self) -> None:
        try:
            if self.path != MEMORY:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            if self.path != MEMORY:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"state: cannot open SQLite file {self.path}: {exc}") from None
        self._conn = conn

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
        def txn(conn: sqlite3.Connection) -> bool:
            # IMMEDIATE takes the write lock first, so the check and the write are atomic
            # across processes.
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT revision FROM models WHERE name = ?", (model,)
                ).fetchone()
                current = None if row is None else int(row[0])
                if current != expected:
                    conn.execute("ROLLBACK")
                    return False
                conn.execute(
                    "INSERT INTO models (name, revision, data) VALUES (?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET revision = excluded.revision, "
                    "data = excluded.data",
                    (model, (expected or 0) + 1, _dump(data)),
                )
                conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
                conn.execute(
                    "INSERT INTO audit (model, entry) VALUES (?, ?)",
                    (model, _dump(audit.to_json())),
                )
                conn.execute("COMMIT")
                return True
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        return await self._run(txn)

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

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await anyio.to_thread.run_sync(close)


# --- Redis -----------------------------------------------------------------------------------

# KEYS: model hash, generation counter, audit list. ARGV: expected revision ('' = absent),
# new revision, data, audit entry, audit length kept. One script, so the check and the
# write are atomic on the server: no WATCH round trips, no lost update between replicas.
_CAS_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'revision')
if (current or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'revision', ARGV[2], 'data', ARGV[3])
redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
return 1
"""


class RedisStore:
    """One Redis database shared by every replica."""

    def __init__(self, url: str, prefix: str = DEFAULT_REDIS_PREFIX) -> None:
        import redis.asyncio

        parts = urlsplit(url)
        self.description = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
        self._client = redis.asyncio.Redis.from_url(
            url, decode_responses=True, socket_timeout=5.0, socket_connect_timeout=5.0
        )
        self._prefix = prefix
        self._cas = self._client.register_script(_CAS_SCRIPT)

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    async def open(self) -> None:
        import redis.exceptions

        try:
            await self._client.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StateError(f"state: cannot reach {self.description}: {exc}") from None

    async def generation(self) -> int:
        value = await self._client.get(self._key("generation"))
        return int(value or 0)

    async def load(self) -> dict[str, Stored]:
        names = cast(set[str], await self._client.smembers(self._key("models")))
        out: dict[str, Stored] = {}
        for name in sorted(names):
            fields = cast(dict[str, str], await self._client.hgetall(self._key("model", name)))
            if fields:
                out[name] = Stored(int(fields["revision"]), jsoncodec.loads(fields["data"]))
        return out

    async def write(
        self, model: str, expected: int | None, data: dict[str, Any], audit: AuditEntry
    ) -> bool:
        await self._client.sadd(self._key("models"), model)
        done = await self._cas(
            keys=[self._key("model", model), self._key("generation"), self._key("audit")],
            args=[
                "" if expected is None else str(expected),
                str((expected or 0) + 1),
                _dump(data),
                _dump(audit.to_json()),
                REDIS_AUDIT_KEPT,
            ],
        )
        return bool(done)

    async def audit(self, model: str | None = None, limit: int = 100) -> list[AuditEntry]:
        span = limit if model is None else REDIS_AUDIT_KEPT
        rows = cast(list[str], await self._client.lrange(self._key("audit"), 0, span - 1))
        entries = [AuditEntry.from_json(jsoncodec.loads(row)) for row in rows]
        if model is not None:
            entries = [e for e in entries if e.model == model]
        return entries[:limit]

    async def aclose(self) -> None:
        await self._client.aclose()


def open_store(url: str | None) -> StateStore:
    """The store a `state:` value names: None or `:memory:` (process-local, for tests and
    embedding), a `redis://` / `rediss://` URL, or a SQLite file path.

    Raises:
        StateError: a URL scheme this proxy cannot use.
    """
    if url is None or url == MEMORY:
        return SqliteStore(MEMORY)
    if "://" in url:
        scheme = urlsplit(url).scheme
        if scheme in ("redis", "rediss", "unix"):
            return RedisStore(url)
        raise StateError(f"state: {scheme}:// is not a store (use a file path or redis://)")
    return SqliteStore(url)
