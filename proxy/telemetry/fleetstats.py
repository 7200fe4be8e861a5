"""The report over the fleet: each process's statistics window, shared through the store.

Every `reporting.slot` each process writes its window (`Stats.export`: HDR histograms in
their compressed encoding, parity counts, the legacy client inventory) to the state store
under its member id, kept for `KEEP_PERIODS` slots; `peers` reads back the other replicas'
newest, which `Hub.report` merges with its own figures exactly as it merges another
worker's file. A replica's own workers share files (fresher, within a second), so the
store's entries of this replica (`<replica id>#<pid>`) are left to them and never counted
twice. Another replica's figures reach a report at most one slot late, and leave it
`KEEP_PERIODS` slots after that replica stopped publishing (or at once when it stops
gracefully).

A store that does not answer costs the report only the other replicas' figures: a
publication is tried again at the next slot, and a report shows this replica alone,
saying so (`Hub.report`: `replicas_reachable: false`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from proxy.cutover.store import StateError
from proxy.tasks import pause

LOGGER = logging.getLogger("serving_proxy")
# A process's statistics outlive its last publication by this many slots: a replica that
# died leaves the report then; a late publication or two does not drop one from it.
KEEP_PERIODS = 3


class StatsStore(Protocol):
    async def publish_stats(self, member: str, document: dict[str, Any], ttl_s: float) -> None: ...

    async def drop_stats(self, member: str) -> None: ...

    async def fleet_stats(self) -> dict[str, dict[str, Any]]: ...


def replica_of(member: str) -> str:
    """The replica a member id belongs to (a worker publishes as `<replica id>#<pid>`)."""
    return member.partition("#")[0]


class FleetStats:
    """This process's statistics published to the store, and the other replicas' read back.

    Args:
        store: the state store the replicas share.
        member: this process's id in the store (`<replica id>#<pid>` with workers); its
            replica's entries (its workers') are not read back.
        export: this process's window now (`Stats.export` at the current time).
        every_s: how often to publish (`reporting.slot`).
    """

    def __init__(
        self,
        store: StatsStore,
        member: str,
        export: Callable[[], dict[str, Any]],
        every_s: float,
    ) -> None:
        self.store = store
        self.member = member
        self.replica_id = replica_of(member)
        self.export = export
        self.every_s = every_s
        self.reachable = True
        self._published_ok = True

    async def publish(self) -> None:
        """Write this process's window once (a failure is logged once, not raised)."""
        try:
            await self.store.publish_stats(self.member, self.export(), KEEP_PERIODS * self.every_s)
        except StateError as exc:
            if self._published_ok:
                LOGGER.warning("report statistics not shared (tried again later): %s", exc)
            self._published_ok = False
            return
        self._published_ok = True

    async def run(self) -> None:
        """Publish every `every_s` until cancelled."""
        while True:
            await self.publish()
            await pause(self.every_s)

    async def peers(self) -> dict[str, dict[str, Any]]:
        """The other replicas' last published windows, by member id (none while the store
        does not answer: `reachable` says so)."""
        try:
            documents = await self.store.fleet_stats()
        except StateError:
            self.reachable = False
            return {}
        self.reachable = True
        return {
            member: document
            for member, document in sorted(documents.items())
            if replica_of(member) != self.replica_id
            and isinstance(document, dict)
            and "slots" in document
        }

    async def aclose(self) -> None:
        """Take this process's figures out of the fleet's report (a graceful stop)."""
        with contextlib.suppress(StateError):
            await self.store.drop_stats(self.member)
