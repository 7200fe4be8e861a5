"""The rollout leader: one replica at a time holds a lease in the store and steps rollouts.

The lease lives `cutover.leader_ttl_s` in the store and its holder renews it every third of
that; the other replicas try to take it every `ACQUIRE_S` (or every third of the TTL, if
shorter), so a leader that dies is replaced within the TTL plus one try. Each acquisition
carries a new fencing token, and the steps the leader writes are fenced with its lease
(`StateStore.write_fenced`): a paused or partitioned former leader is refused by the store
itself, whatever it believes.

Belief is bounded too: a leader counts as one only until `VALID_SHARE` of the TTL after it
last *sent* an acquisition or renewal the store took, so it stops acting before the store
could let the lease go to another (the store measures the TTL from when it received the
request, later than when it was sent).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from proxy import tasks
from proxy.cutover.store import Lease, StateError, StateStore

LOGGER = logging.getLogger("serving_proxy.cutover")
# The renewal period, as a share of the TTL: two renewals may fail before the lease lapses.
RENEW_SHARE = 1 / 3
# How long after a renewal was sent this replica still acts as the leader, as a share of
# the TTL: what is left covers clock-rate differences and the last write's round trip.
VALID_SHARE = 0.8
# A replica that does not lead tries to take the lease at least this often.
ACQUIRE_S = 1.0


class Leadership:
    """Whether this replica leads the rollout, kept up by `run`.

    Args:
        store: where the lease lives.
        replica_id: this replica's id, the lease holder's name.
        ttl_s: the lease's time to live (`cutover.leader_ttl_s`).
        monotonic: the clock the lease's validity is measured with here.
    """

    def __init__(
        self,
        store: StateStore,
        replica_id: str,
        ttl_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.replica_id = replica_id
        self.ttl_s = ttl_s
        self._monotonic = monotonic
        self._lease: Lease | None = None
        self._valid_until = 0.0
        self._reachable = True

    @property
    def lease(self) -> Lease | None:
        """The lease this replica may act on now; None: it does not lead (or no longer
        knows that it does)."""
        if self._lease is None or self._monotonic() >= self._valid_until:
            return None
        return self._lease

    def leads(self) -> bool:
        return self.lease is not None

    def lost(self, why: str) -> None:
        """Stop acting as the leader now (the store refused a renewal or a fenced write)."""
        if self._lease is not None:
            LOGGER.warning(
                "%s: no longer the rollout leader (fencing token %d): %s",
                self.replica_id,
                self._lease.fencing_token,
                why,
            )
        self._lease = None

    async def turn(self) -> None:
        """One try: renew the lease held, or take it if free.

        Raises:
            StateError: the store did not answer (a lease held stays valid here until its
                local deadline passes).
        """
        sent = self._monotonic()
        held = self._lease
        if held is not None:
            if await self.store.renew_lease(held, self.ttl_s):
                self._valid_until = sent + self.ttl_s * VALID_SHARE
            else:
                self.lost("the lease expired in the store")
            return
        lease = await self.store.acquire_lease(self.replica_id, self.ttl_s)
        if lease is not None:
            self._lease = lease
            self._valid_until = sent + self.ttl_s * VALID_SHARE
            LOGGER.info(
                "%s: now the rollout leader (fencing token %d)",
                self.replica_id,
                lease.fencing_token,
            )

    async def run(self) -> None:
        """Renew or take the lease until cancelled."""
        while True:
            try:
                await self.turn()
                self._reachable = True
            except StateError as exc:
                if self._reachable:
                    LOGGER.warning("%s: rollout lease: %s", self.replica_id, exc)
                    self._reachable = False
                if self._lease is not None and self.lease is None:
                    self.lost("the store did not answer within the lease")
            pause = self.ttl_s * RENEW_SHARE
            await tasks.pause(pause if self._lease is not None else min(pause, ACQUIRE_S))

    async def release(self) -> None:
        """Give the lease up (a graceful stop), so that another replica leads at once."""
        held, self._lease = self._lease, None
        if held is None:
            return
        try:
            await self.store.release_lease(held)
        except StateError as exc:
            LOGGER.warning("%s: rollout lease not released: %s", self.replica_id, exc)
