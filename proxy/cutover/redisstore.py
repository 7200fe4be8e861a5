"""The Redis state store: one database shared by every replica (see `store` for the
contract every store keeps; this module holds only what is Redis's own).

    state: redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from collections.abc import AsyncGenerator, Collection, Iterator
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit

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
from proxy.tasks import checkpoint

DEFAULT_REDIS_PREFIX = "serving-proxy"
# The audit log keeps this many entries in Redis (SQLite keeps all: a file is cheap).
REDIS_AUDIT_KEPT = 10_000
# Short, so that an unreachable Redis is a prompt 503 (and a prompt local rollback)
# rather than a request that hangs; the commands are tiny and local to one database.
REDIS_TIMEOUT_S = 2.0
# One retry on a fresh connection: a Redis that restarted leaves the pooled connection
# dead, and the first command after the restart should not fail for that alone.
REDIS_RETRIES = 1

# KEYS: model hash, generation counter, audit list, epoch, change channel. ARGV: expected
# revision ('' = absent), new revision, data, audit entry, audit length kept, a fresh epoch.
# One script, so the check and the write are atomic on the server: no WATCH round trips, no
# lost update between replicas. The epoch is set by the first write into an empty
# database, so a Redis that restarted empty shows a new one even when its counter climbs
# back to a value a replica has already seen. The new generation is published on the
# change channel, so every replica hears of the write at once.
_CAS_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'revision')
if (current or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'revision', ARGV[2], 'data', ARGV[3])
redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
redis.call('SET', KEYS[4], ARGV[6], 'NX')
redis.call('PUBLISH', KEYS[5], redis.call('GET', KEYS[2]))
return 1
"""
# A fenced write: the compare-and-set above, run only while KEYS[6] (the rollout lease)
# still holds ARGV[7] (the writer's lease); -1 otherwise. Checked in the same script, so
# no lease can expire and pass to another replica between the check and the write.
_FENCED_CAS_SCRIPT = (
    """
local lease = redis.call('GET', KEYS[6])
if lease ~= ARGV[7] then return -1 end
"""
    + _CAS_SCRIPT
)
# KEYS: lease, fencing counter. ARGV: holder, since, ttl in ms. SET NX PX, with the next
# fencing token in the value; the counter moves only for an acquisition that succeeds.
_ACQUIRE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. '|' .. ARGV[2] .. '|' .. ARGV[1], 'NX', 'PX', ARGV[3])
return token
"""
# KEYS: lease. ARGV: the holder's lease, ttl in ms (0: give it up). Only the holder's own.
_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) == 0 then redis.call('DEL', KEYS[1]) else
redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""
# Waiting for an announcement returns at least this often, so that a dead connection is
# noticed (a PING on it) even when no change is made.
PUBSUB_IDLE_S = 1.0
PUBSUB_SILENT_S = 3 * PUBSUB_IDLE_S


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
        from redis.backoff import ExponentialBackoff, NoBackoff

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
        # Announcements on a client of their own that never reconnects by itself: a lost
        # subscription must be seen, so that what was announced meanwhile is read.
        self._listener = redis.asyncio.Redis.from_url(
            url,
            password=password,
            decode_responses=True,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        self._prefix = prefix
        self._cas = self._client.register_script(_CAS_SCRIPT)
        self._fenced_cas = self._client.register_script(_FENCED_CAS_SCRIPT)
        self._acquire = self._client.register_script(_ACQUIRE_SCRIPT)
        self._renew = self._client.register_script(_RENEW_SCRIPT)
        # Pub/sub channels are not per database: the channel names the database too.
        db = parts.path.strip("/") or "0"
        self.channel = self._key("changes", db)

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
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py can turn a cancellation mid-command into a connection error;
                # as a StateError a loop would take it for an outage and never stop.
                raise asyncio.CancelledError() from exc
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

    def _write_keys(self, model: str) -> list[str]:
        """What a write's script touches, in the order both scripts read KEYS."""
        return [
            self._key("model", model),
            self._key("generation"),
            self._key("audit"),
            self._key("epoch"),
            self.channel,
        ]

    async def write(
        self, model: str, expected: int | None, data: dict[str, Any], audit: AuditEntry
    ) -> bool:
        with self._reached():
            await self._client.sadd(self._key("models"), model)
            done = await self._cas(
                keys=self._write_keys(model), args=self._cas_args(expected, data, audit)
            )
        return bool(done)

    def _cas_args(
        self, expected: int | None, data: dict[str, Any], audit: AuditEntry
    ) -> list[str | int]:
        return [
            "" if expected is None else str(expected),
            str((expected or 0) + 1),
            encode_document(data),
            encode_document(audit.to_json()),
            REDIS_AUDIT_KEPT,
            os.urandom(8).hex(),
        ]

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

    async def acquire_lease(self, replica_id: str, ttl_s: float) -> Lease | None:
        since = time.time()
        with self._reached():
            token = await self._acquire(
                keys=[self._key("leader"), self._key("fencing")],
                args=[replica_id, repr(since), _ms(ttl_s)],
            )
        return Lease(replica_id, since, int(token)) if token else None

    async def renew_lease(self, lease: Lease, ttl_s: float) -> bool:
        with self._reached():
            done = await self._renew(keys=[self._key("leader")], args=[lease.encode(), _ms(ttl_s)])
        return bool(done)

    async def release_lease(self, lease: Lease) -> None:
        with self._reached():
            await self._renew(keys=[self._key("leader")], args=[lease.encode(), 0])

    async def lease(self) -> Lease | None:
        with self._reached():
            value = cast(str | None, await self._client.get(self._key("leader")))
        return None if value is None else Lease.decode(value)

    async def write_fenced(
        self,
        model: str,
        expected: int | None,
        data: dict[str, Any],
        audit: AuditEntry,
        lease: Lease,
    ) -> bool:
        with self._reached():
            await self._client.sadd(self._key("models"), model)
            done = await self._fenced_cas(
                keys=[*self._write_keys(model), self._key("leader")],
                args=[*self._cas_args(expected, data, audit), lease.encode()],
            )
        if done == -1:
            raise FencingError(self.description, lease)
        return bool(done)

    def changes(self) -> AsyncGenerator[int, None] | None:
        return self._changes()

    async def _changes(self) -> AsyncGenerator[int, None]:
        """SUBSCRIBE on a connection of its own; each message is a generation. A lost
        connection, or one silent past `PUBSUB_SILENT_S` (its PINGs unanswered: a
        partition sends no FIN), ends the iteration with `StateError`; the caller
        subscribes again."""
        loop = asyncio.get_running_loop()
        with self._reached():
            async with self._listener.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(self.channel)
                heard = loop.time()
                yield -1
                while True:
                    checkpoint()
                    message = await pubsub.get_message(timeout=PUBSUB_IDLE_S)
                    now = loop.time()
                    if message is not None:
                        heard = now
                    elif now - heard > PUBSUB_SILENT_S:
                        raise StateError(
                            f"state: {self.description}: no answer on the change channel"
                        )
                    else:
                        await pubsub.ping()
                    if message is not None and message.get("type") == "message":
                        try:
                            yield int(message["data"])
                        except (TypeError, ValueError):
                            yield -1

    async def heartbeat(self, replica_id: str, record: dict[str, Any], ttl_s: float) -> None:
        await self._put(_REPLICAS, replica_id, record, ttl_s)

    async def leave(self, replica_id: str) -> None:
        await self._drop(_REPLICAS, replica_id)

    async def replicas(self) -> list[dict[str, Any]]:
        return list((await self._live(_REPLICAS)).values())

    async def publish_stats(self, member: str, document: dict[str, Any], ttl_s: float) -> None:
        await self._put(_STATS, member, document, ttl_s)

    async def drop_stats(self, member: str) -> None:
        await self._drop(_STATS, member)

    async def fleet_stats(self) -> dict[str, dict[str, Any]]:
        return await self._live(_STATS)

    # Records that expire, each its own key with a TTL, listed by an index set.

    async def _put(
        self, kind: tuple[str, str], key: str, record: dict[str, Any], ttl_s: float
    ) -> None:
        one, index = kind
        with self._reached():
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(self._key(one, key), encode_document(record), px=_ms(ttl_s))
                pipe.sadd(self._key(index), key)
                await pipe.execute()

    async def _drop(self, kind: tuple[str, str], key: str) -> None:
        one, index = kind
        with self._reached():
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.delete(self._key(one, key))
                pipe.srem(self._key(index), key)
                await pipe.execute()

    async def _live(self, kind: tuple[str, str]) -> dict[str, dict[str, Any]]:
        one, index = kind
        with self._reached():
            keys = sorted(cast(set[str], await self._client.smembers(self._key(index))))
            if not keys:
                return {}
            values = cast(
                list[str | None], await self._client.mget([self._key(one, k) for k in keys])
            )
            gone = [k for k, value in zip(keys, values, strict=True) if value is None]
            if gone:
                # Expired records leave their key in the index: tidy it as we read.
                await self._client.srem(self._key(index), *gone)
        return {
            k: jsoncodec.loads(value)
            for k, value in zip(keys, values, strict=True)
            if value is not None
        }

    async def aclose(self) -> None:
        await self._listener.aclose()
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


# (a record's key, the index listing them): the replicas' heartbeats, their statistics.
_REPLICAS = ("replica", "replicas")
_STATS = ("stats", "stats-members")


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
