"""Following the store: what other processes changed reaches this one's table.

Every process polls the store's generation counter every `poll_s`, so a change made
through one replica is in force on all of them well within a second; the same loop then
runs the rollout controller's tick on what this process has seen. Reads only: every write
goes through `commands`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from proxy.cutover.store import StateError, StateStore, Stored
from proxy.cutover.table import ChangeHook, LiveTable, ModelState

LOGGER = logging.getLogger("serving_proxy.cutover")
DEFAULT_POLL_S = 0.25


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
    ) -> None:
        self.table = table
        self.store = store
        self.poll_s = poll_s
        self._changed = changed
        self._generation = -1
        self._store_ok = True

    async def refresh(self, *, force: bool = False) -> bool:
        """Reload the state if the store's generation moved. True if anything changed."""
        generation = await self.store.generation()
        if generation == self._generation and not force:
            return False
        stored = await self.store.load()
        self._generation = generation
        changed = False
        for name in self.table.config.models:
            item = stored.get(name)
            if item is not None:
                changed |= self._adopt(name, item)
        if changed:
            self.table.publish()
        return changed

    def _adopt(self, name: str, item: Stored) -> bool:
        if self.table.revision(name) == item.revision:
            return False
        old = self.table.state(name)
        new = ModelState.from_json(item.data)
        self.table.put(name, item.revision, new)
        if new != old:
            self._changed(name, old, new, "sync")
        return True

    async def follow(self, tick: Callable[[], Awaitable[None]]) -> None:
        """Poll the store and run `tick` after each poll, until cancelled."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
                await tick()
                if not self._store_ok:
                    LOGGER.warning("state store %s reachable again", self.store.description)
                    self._store_ok = True
            except (StateError, OSError, ConnectionError) as exc:
                # Keep serving the last known table; say so once, not four times a second.
                if self._store_ok:
                    LOGGER.warning("state store %s: %s", self.store.description, exc)
                    self._store_ok = False
            except Exception:
                if self._store_ok:
                    LOGGER.exception("cutover loop failed; keeping the last known table")
                    self._store_ok = False
