"""The replicas of a deployment: each writes a heartbeat record to the store, and any one
lists them all (`GET /admin/replicas`).

A record says who (id, host, package version), what it serves (the state generation it
has applied), how busy it is (requests in flight), whether it leads the rollout, and
whether it is `stale`: cut off from the store, serving its last known table. A record
expires in the store after `RECORD_TTLS` lease TTLs without a heartbeat; until then a
record older than `STALE_AFTER_S` is listed as stale by whoever reads it. A replica that
cannot reach the store lists its own record from memory, stale.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from proxy import __version__, tasks
from proxy.cutover.lease import Leadership
from proxy.cutover.store import StateError, StateStore
from proxy.cutover.sync import StoreSync

LOGGER = logging.getLogger("serving_proxy.cutover")
HEARTBEAT_S = 1.0
# Heartbeats missed before a record is listed stale: a pause of the event loop, a slow
# store or some clock skew between hosts should not flag a replica that is fine.
STALE_AFTER_S = 5 * HEARTBEAT_S
RECORD_TTLS = 3


class Presence:
    """This replica's heartbeat, and the list of every replica's.

    Args:
        store: where the records live.
        replica_id: this replica's id.
        sync: what this replica has applied from the store, and whether it reaches it.
        leadership: whether this replica leads the rollout.
        clock: wall time (epoch seconds) stamped on the record.
    """

    def __init__(
        self,
        store: StateStore,
        replica_id: str,
        sync: StoreSync,
        leadership: Leadership,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.replica_id = replica_id
        self.host = socket.gethostname()
        self.sync = sync
        self.leadership = leadership
        self.clock = clock
        # Requests in flight here: the app sets it to read the runtime's counter.
        self.in_flight: Callable[[], int] = lambda: 0
        self._beat_ok = True
        self._last_beat: float | None = None

    @property
    def stale(self) -> bool:
        """Whether this replica is cut off from the store (serving its last known table)."""
        return not (self.sync.reachable and self._beat_ok)

    def record(self) -> dict[str, Any]:
        """This replica's record as of now."""
        return {
            "replica_id": self.replica_id,
            "host": self.host,
            "version": __version__,
            "state_version": self.sync.generation,
            "last_heartbeat": self._last_beat,
            "in_flight": self.in_flight(),
            "leader": self.leadership.leads(),
            "stale": self.stale,
        }

    async def beat(self) -> None:
        """Write this replica's record once (an outage is remembered, not raised)."""
        now = self.clock()
        record = {**self.record(), "last_heartbeat": now}
        try:
            await self.store.heartbeat(self.replica_id, record, RECORD_TTLS * self.leadership.ttl_s)
        except StateError as exc:
            if self._beat_ok:
                LOGGER.warning("%s: heartbeat not stored: %s", self.replica_id, exc)
            self._beat_ok = False
            return
        self._beat_ok = True
        self._last_beat = now

    async def run(self) -> None:
        """Heartbeat until cancelled."""
        while True:
            await self.beat()
            await tasks.pause(HEARTBEAT_S)

    async def leave(self) -> None:
        """Take this replica's record out (a graceful stop)."""
        with contextlib.suppress(StateError):  # else it expires by itself
            await self.store.leave(self.replica_id)

    async def fleet(self) -> tuple[list[dict[str, Any]], bool]:
        """Every replica's record, and whether the store answered: when it did not, the
        list holds this replica's own record only, from memory."""
        try:
            records = await self.store.replicas()
        except StateError:
            return [self.record()], False
        now = self.clock()
        own = self.record()
        listed = []
        for record in records:
            if record.get("replica_id") == self.replica_id:
                # This replica knows itself better than its last heartbeat does.
                record = {**own, "last_heartbeat": record.get("last_heartbeat")}
            beat = record.get("last_heartbeat")
            old = not isinstance(beat, int | float) or now - beat > STALE_AFTER_S
            listed.append({**record, "stale": bool(record.get("stale")) or old})
        if not any(r["replica_id"] == self.replica_id for r in listed):
            listed.append(own)
        return sorted(listed, key=lambda r: str(r["replica_id"])), True
