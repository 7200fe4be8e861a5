"""Following the store: what other processes changed reaches this one's table.

A store that announces its writes (Redis pub/sub: `StateStore.changes`) wakes every
replica at once, so a change made through one is in force on all within milliseconds;
then the generation counter is also polled every `SLOW_POLL_S`, for an announcement that
was lost. A store that announces nothing (SQLite) is polled every `poll_s`. The same loop
runs every `poll_s` and hands over to the cutover (deferred changes written, the rollout
controller's tick), also while the store is out, so that a failing gate still rolls this
process back. Reads only: every write goes through `commands`.

The counter alone is not trusted after an outage: a Redis that restarted empty, or from an
older snapshot, may show a counter this process has seen before over other states. So the
first poll after an outage, and one every `FULL_RELOAD_S` whatever the counter says,
reads every model, and a state is adopted when its revision *or* its content differs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from proxy.cutover.store import StateError, StateStore, Stored
from proxy.cutover.table import ChangeHook, LiveTable, ModelState
from proxy.tasks import checkpoint, pause

LOGGER = logging.getLogger("serving_proxy.cutover")
DEFAULT_POLL_S = 0.25
# With announcements heard, the counter is read this often regardless.
SLOW_POLL_S = 1.0
# A lost subscription is tried again after this long, doubling up to the cap.
RESUBSCRIBE_S = 0.1
RESUBSCRIBE_CAP_S = 5.0
# A full read of every model at least this often, whatever the generation counter says.
FULL_RELOAD_S = 5.0

# Run after each poll; told whether the store answered it.
AfterPoll = Callable[[bool], Awaitable[None]]


class StoreSync:
    """Keeps a `LiveTable` in step with the shared store.

    Args:
        table: the states to update.
        store: where the shared state lives.
        changed: told about each model whose state another process changed (action `sync`).
        poll_s: the pause between two polls.
    """

    def __init__(
        self,
        table: LiveTable,
        store: StateStore,
        changed: ChangeHook,
        poll_s: float = DEFAULT_POLL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.store = store
        self.poll_s = poll_s
        self._changed = changed
        self._monotonic = monotonic
        self._generation = -1
        self._loaded_at = monotonic()
        self._after_ok = True
        self._polled_at = monotonic()
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self.reachable = True
        # Whether the store's announcements are heard now (else: poll every `poll_s`).
        self.pushed = False

    @property
    def generation(self) -> int:
        """The store generation this process has applied (-1: none yet)."""
        return self._generation

    def notify(self) -> None:
        """The store announced a write: poll now rather than at the next turn."""
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def refresh(self, *, force: bool = False) -> bool:
        """Reload the state if the store's generation moved. True if anything changed.

        Raises:
            StateError: the store did not answer.
        """
        generation = await self.store.generation()
        if generation == self._generation and not force:
            return False
        stored = await self.store.load()
        self._generation = generation
        self._loaded_at = self._monotonic()
        changed = False
        for name in self.table.config.models:
            item = stored.get(name)
            if item is not None:
                changed |= self._adopt(name, item)
            elif self.table.revision(name) is not None:
                # The store lost it (a Redis restarted empty): keep serving what we know,
                # and write the next change as a new entry rather than fail to match.
                self.table.put(name, None, self.table.stored(name))
        if changed:
            self.table.publish()
        return changed

    def _adopt(self, name: str, item: Stored) -> bool:
        new = ModelState.from_json(item.data)
        if (self.table.revision(name), self.table.stored(name)) == (item.revision, new):
            return False
        before = self.table.state(name)
        self.table.put(name, item.revision, new)
        after = self.table.state(name)
        if after != before:
            self._changed(name, before, after, "sync")
        return True

    async def poll(self) -> bool:
        """One poll: re-read what changed (everything, after an outage or `FULL_RELOAD_S`).
        False when the store did not answer; the loss and the return are logged once."""
        stale = self._monotonic() - self._loaded_at >= FULL_RELOAD_S
        self._polled_at = self._monotonic()
        try:
            await self.refresh(force=not self.reachable or stale)
        except (StateError, OSError, ConnectionError) as exc:
            # Keep serving the last known table; say so once, not four times a second.
            if self.reachable:
                LOGGER.warning("state store %s: %s", self.store.description, exc)
                self.reachable = False
            return False
        if not self.reachable:
            LOGGER.warning("state store %s reachable again", self.store.description)
            self.reachable = True
        return True

    async def follow(self, after: AfterPoll) -> None:
        """Poll the store (on an announcement, else every `poll_s`, or `SLOW_POLL_S`
        while announcements are heard) and run `after` every turn, until cancelled."""
        while True:
            await self._pause()
            woken, self._woken = self._woken, False
            slow = self._monotonic() - self._polled_at >= SLOW_POLL_S
            if woken or not self.pushed or slow or not self.reachable:
                reachable = await self.poll()
            else:
                reachable = self.reachable
            try:
                await after(reachable)
                self._after_ok = True
            except StateError:
                pass  # the store went away after the poll; the next poll says so
            except Exception:
                if self._after_ok:
                    LOGGER.exception("cutover loop failed; keeping the last known table")
                    self._after_ok = False

    async def _pause(self) -> None:
        """Wait `poll_s`, or less if `notify` comes first. A bare future and a timer: a
        cancellation that meets the timeout here is never taken for the timeout (as
        `asyncio.wait_for` on 3.11, or a cancel scope, may), so the loop always stops."""
        checkpoint()
        if self._woken:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(self.poll_s, _wake, waiter)
        self._waiter = waiter
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def listen(self) -> None:
        """Hear the store's announcements until cancelled, subscribing again (with a
        growing pause) whenever the subscription is lost. A store that announces nothing
        returns at once and is polled."""
        backoff = RESUBSCRIBE_S
        while True:
            changes = self.store.changes()
            if changes is None:
                return
            try:
                async for _generation in changes:
                    # The first is the subscription itself: whatever was announced
                    # while this process was not listening is read now.
                    self.pushed = True
                    backoff = RESUBSCRIBE_S
                    self.notify()
            except StateError as exc:
                if self.pushed:
                    LOGGER.warning(
                        "state store %s: announcements lost: %s", self.store.description, exc
                    )
            finally:
                await changes.aclose()
            self.pushed = False
            self.notify()
            await pause(backoff)
            backoff = min(backoff * 2, RESUBSCRIBE_CAP_S)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
