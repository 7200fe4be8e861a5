"""Where run-time cutover state lives: the Protocol every store keeps and the values they
share (the SQLite file, the default, is `sqlitestore`; Redis is `redisstore`).

I/O only, no policy: a store keeps one JSON document per model with a revision number,
a generation counter that moves on every change (what replicas poll, cheaply) and an
append-only audit log. Writes are compare-and-set on the model's revision, so two
replicas (or uvicorn workers) that change the same model at once cannot lose an update:
one wins, the other re-reads and decides again.

    state: /var/lib/serving-proxy/state.sqlite3   # one host, any number of workers
    state: redis://127.0.0.1:6379/0               # several replicas

A SQLite file and its -wal/-shm/-journal companions are readable by their owner only
(0600): the audit log names who changed what. Every failure to reach or use a store is a
`StateError`, whatever the driver raised, so callers have one thing to catch.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from proxy import jsoncodec

DEPLOYMENT_SECRET_BYTES = 32


class StateError(Exception):
    """The state store cannot be opened or used; the message says which and why."""


class FencingError(StateError):
    """A write carried a fencing token that is no longer the rollout leader's: refused by
    the store, so a paused or partitioned former leader can never write a step."""

    def __init__(self, store: str, lease: Lease) -> None:
        super().__init__(
            f"state: {store}: fencing token {lease.fencing_token} no longer holds the rollout lease"
        )


@dataclass(frozen=True, slots=True)
class Lease:
    """Who leads the rollout: held in the store with a time to live, renewed by its holder.
    `fencing_token` grows with every acquisition; the store refuses a fenced write whose
    lease is no longer the one held."""

    replica_id: str
    since: float
    fencing_token: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def encode(self) -> str:
        """One string naming this acquisition exactly (a token alone may repeat after a
        Redis restarted empty; token, time and holder together do not)."""
        return f"{self.fencing_token}|{self.since!r}|{self.replica_id}"

    @classmethod
    def decode(cls, value: str) -> Lease:
        token, since, replica_id = value.split("|", 2)
        return cls(replica_id, float(since), int(token))


@dataclass(frozen=True, slots=True)
class Stored:
    revision: int
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change: when, who (the admin token's configured name, or `rollout`), what, why,
    and where: the replica that wrote it and, for a rollout leader's step, its lease's
    fencing token. Entries stored before those two were kept read back with "" and None."""

    at: float
    model: str
    actor: str
    action: str
    old: dict[str, Any] | None
    new: dict[str, Any]
    reason: str
    replica: str = ""
    fencing_token: int | None = None

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
            replica=str(data.get("replica", "")),
            fencing_token=_optional_int(data.get("fencing_token")),
        )


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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

    async def deployment_secret(self) -> bytes:
        """The deployment's secret (client labels' hash key): made on the first call,
        atomically, so every process and replica that asks gets the same one."""
        ...

    async def acquire_lease(self, replica_id: str, ttl_s: float) -> Lease | None:
        """Take the rollout lease for `ttl_s` if nobody holds it, with a new fencing token;
        None: someone holds it."""
        ...

    async def renew_lease(self, lease: Lease, ttl_s: float) -> bool:
        """Extend the lease to `ttl_s` from now iff it is still `lease`. False: it expired
        and someone else may hold it."""
        ...

    async def release_lease(self, lease: Lease) -> None:
        """Give the lease up iff it is still `lease` (a graceful stop: no one waits a TTL)."""
        ...

    async def lease(self) -> Lease | None:
        """The lease held now, if any."""
        ...

    async def write_fenced(
        self,
        model: str,
        expected: int | None,
        data: dict[str, Any],
        audit: AuditEntry,
        lease: Lease,
    ) -> bool:
        """`write`, iff `lease` is still the one held, checked in the same atomic step.

        Raises:
            FencingError: the lease is no longer `lease`; nothing was written.
        """
        ...

    def changes(self) -> AsyncGenerator[int, None] | None:
        """The store's announcements of its writes (the new generation, each as it is
        made; first -1, once listening, for whatever was missed before), for as long as
        the connection lasts; raises `StateError` when it is lost. None: this store
        announces nothing and is polled."""
        ...

    async def heartbeat(self, replica_id: str, record: dict[str, Any], ttl_s: float) -> None:
        """Store this replica's record, forgotten after `ttl_s` unless written again."""
        ...

    async def leave(self, replica_id: str) -> None:
        """Forget this replica's record now (a graceful stop)."""
        ...

    async def replicas(self) -> list[dict[str, Any]]:
        """Every replica record not yet expired, by replica id."""
        ...

    async def publish_stats(self, member: str, document: dict[str, Any], ttl_s: float) -> None:
        """Store one process's reporting statistics (its `Stats.export`), forgotten after
        `ttl_s` unless written again."""
        ...

    async def drop_stats(self, member: str) -> None:
        """Forget one process's statistics now (a graceful stop)."""
        ...

    async def fleet_stats(self) -> dict[str, dict[str, Any]]:
        """Every process's statistics not yet expired, by its member id."""
        ...

    async def aclose(self) -> None: ...

    async def publish_window(
        self, model: str, key: str, start: float, record: dict[str, Any], now: float, ttl_s: float
    ) -> None:
        """Keep one replica's closed gate-window slot of a model (`fleet.SlotRecord`) under
        `key` for `ttl_s`; the model's slots past their time go."""
        ...

    async def window_slots(
        self, model: str, start: float, known: Collection[str]
    ) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """The keys of the model's slots that start at or after `start`, and the records
        of those not in `known` (a record never changes once published)."""
        ...


def encode_document(obj: Any) -> str:
    return jsoncodec.dumps(obj).decode("utf-8")
