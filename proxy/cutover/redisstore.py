"""The Redis state store: one database shared by every replica (see `store` for the
contract every store keeps; this module holds only what is Redis's own).

    state: redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit

from proxy import jsoncodec
from proxy.cutover.store import (
    DEPLOYMENT_SECRET_BYTES,
    AuditEntry,
    StateError,
    Stored,
    encode_document,
)

DEFAULT_REDIS_PREFIX = "serving-proxy"
# The audit log keeps this many entries in Redis (SQLite keeps all: a file is cheap).
REDIS_AUDIT_KEPT = 10_000
# Short, so that an unreachable Redis is a prompt 503 (and a prompt local rollback)
# rather than a request that hangs; the commands are tiny and local to one database.
REDIS_TIMEOUT_S = 2.0
# One retry on a fresh connection: a Redis that restarted leaves the pooled connection
# dead, and the first command after the restart should not fail for that alone.
REDIS_RETRIES = 1

# KEYS: model hash, generation counter, audit list, epoch. ARGV: expected revision ('' =
# absent), new revision, data, audit entry, audit length kept, a fresh epoch. One script,
# so the check and the write are atomic on the server: no WATCH round trips, no lost update
# between replicas. The epoch is set by the first write into an empty database, so a Redis
# that restarted empty shows a new one even when its counter climbs back to a value a
# replica has already seen.
_CAS_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'revision')
if (current or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'revision', ARGV[2], 'data', ARGV[3])
redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
redis.call('SET', KEYS[4], ARGV[6], 'NX')
return 1
"""


class RedisStore:
    """One Redis database shared by every replica.

    Args:
        url: `redis://`, `rediss://` or `unix://`; it may carry a password.
        prefix: the start of every key, so that one database can hold several test runs.
        password: from `redis.password_env`, so it need not be in the config's URL (the
            config refuses both at once: redis-py would let the URL's win silently).
    """

    def __init__(
        self, url: str, prefix: str = DEFAULT_REDIS_PREFIX, password: str | None = None
    ) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff

        parts = urlsplit(url)
        self.description = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
        self._client = redis.asyncio.Redis.from_url(
            url,
            password=password,
            decode_responses=True,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), REDIS_RETRIES),
        )
        self._prefix = prefix
        self._cas = self._client.register_script(_CAS_SCRIPT)

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    @contextmanager
    def _reached(self) -> Iterator[None]:
        """Turn whatever redis-py raises (refused, timed out, auth, a dead connection) into
        the `StateError` the cutover handles: an outage is expected, never a bug."""
        import redis.exceptions

        try:
            yield
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StateError(f"state: {self.description}: {exc}") from exc

    async def open(self) -> None:
        import redis.exceptions

        try:
            await self._client.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StateError(f"state: cannot reach {self.description}: {exc}") from None

    async def generation(self) -> int:
        with self._reached():
            values = await self._client.mget(self._key("generation"), self._key("epoch"))
        counter, epoch = cast(list[str | None], values)
        return (zlib.crc32((epoch or "").encode()) << 32) | int(counter or 0)

    async def load(self) -> dict[str, Stored]:
        out: dict[str, Stored] = {}
        with self._reached():
            names = cast(set[str], await self._client.smembers(self._key("models")))
            for name in sorted(names):
                key = self._key("model", name)
                fields = cast(dict[str, str], await self._client.hgetall(key))
                if fields:
                    out[name] = Stored(int(fields["revision"]), jsoncodec.loads(fields["data"]))
        return out

    async def write(
        self, model: str, expected: int | None, data: dict[str, Any], audit: AuditEntry
    ) -> bool:
        with self._reached():
            await self._client.sadd(self._key("models"), model)
            done = await self._cas(
                keys=[
                    self._key("model", model),
                    self._key("generation"),
                    self._key("audit"),
                    self._key("epoch"),
                ],
                args=[
                    "" if expected is None else str(expected),
                    str((expected or 0) + 1),
                    encode_document(data),
                    encode_document(audit.to_json()),
                    REDIS_AUDIT_KEPT,
                    os.urandom(8).hex(),
                ],
            )
        return bool(done)

    async def audit(self, model: str | None = None, limit: int = 100) -> list[AuditEntry]:
        span = limit if model is None else REDIS_AUDIT_KEPT
        with self._reached():
            rows = cast(list[str], await self._client.lrange(self._key("audit"), 0, span - 1))
        entries = [AuditEntry.from_json(jsoncodec.loads(row)) for row in rows]
        if model is not None:
            entries = [e for e in entries if e.model == model]
        return entries[:limit]

    async def deployment_secret(self) -> bytes:
        key = self._key("deployment-secret")
        with self._reached():
            # SET NX: the first replica's secret stays; everyone reads the one that won.
            await self._client.set(key, os.urandom(DEPLOYMENT_SECRET_BYTES).hex(), nx=True)
            value = cast(str, await self._client.get(key))
        return bytes.fromhex(value)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def publish_window(
        self, model: str, key: str, start: float, record: dict[str, Any], now: float, ttl_s: float
    ) -> None:
        ttl_ms = max(1, round(ttl_s * 1000))
        index = self._key("windows", model)
        with self._reached():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._key("window", model, key), encode_document(record), px=ttl_ms)
                pipe.zadd(index, {key: start})
                # The index lives as long as its newest slot; older members point at keys
                # that expired.
                pipe.zremrangebyscore(index, "-inf", f"({start - ttl_s}")
                pipe.pexpire(index, ttl_ms)
                await pipe.execute()

    async def window_slots(
        self, model: str, start: float, known: Collection[str]
    ) -> tuple[list[str], dict[str, dict[str, Any]]]:
        with self._reached():
            keys = cast(
                list[str],
                await self._client.zrangebyscore(self._key("windows", model), start, "+inf"),
            )
            missing = [key for key in keys if key not in known]
            values = (
                cast(
                    list[str | None],
                    await self._client.mget([self._key("window", model, k) for k in missing]),
                )
                if missing
                else []
            )
        records = {
            key: jsoncodec.loads(value)
            for key, value in zip(missing, values, strict=True)
            if value is not None
        }
        return [key for key in keys if key in known or key in records], records
