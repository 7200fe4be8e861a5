"""The gate windows of the fleet: this replica's windows, published to the shared store,
and the other replicas' read back and merged.

Each model's `window.Window` counts what this replica sees; `publish` (after every poll)
stores each slot that closed, once, as a `fleet.SlotRecord` kept for the window's length;
`read` fetches the records other replicas published (a record never changes, so only new
keys are fetched and decoded). `fleet` merges this replica's slots, the open one included,
with the others' last read, so a step's evidence is every replica's traffic since the step
and this replica's own counts the moment they happen. The other replicas' open slots
reach it when they close: at most one `reporting.slot` late.

A store that does not answer costs nothing but sharing: publishing waits for the next
poll (a slot is kept while it is in the window), and `fleet` is this replica's own
window, marked `shared: false`, until a read succeeds again. The in-memory and SQLite
stores take the same path (the in-memory one has nobody else's records).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from proxy.cutover.fleet import (
    Epoch,
    FleetWindow,
    SlotRecord,
    Totals,
    fleet_window,
    select,
    totals,
)
from proxy.cutover.rollout import WindowStats
from proxy.cutover.store import StateError, StateStore
from proxy.cutover.table import LiveTable, ModelState
from proxy.cutover.window import Window
from proxy.models import Backend

LOGGER = logging.getLogger("serving_proxy.cutover")
# The span of the window of a model without a rollout (it has no gates to judge).
DEFAULT_WINDOW_S = 60.0
_instances = itertools.count()


def default_publisher_id() -> str:
    """An id for this process's window records when none is given: host, process and, for
    a second window set in one process (tests), a counter."""
    n = next(_instances)
    base = f"{socket.gethostname()}:{os.getpid()}"
    return base if n == 0 else f"{base}:{n}"


class SharedWindows:
    """Every model's gate window of this replica, and the fleet's.

    Args:
        table: the models' states (read only) and the config (windows, slot, mismatches).
        store: where the window slots are shared.
        clock: wall time (epoch seconds).
        replica: this replica's id in the records (unique per process: several workers
            of one replica each publish their own).
    """

    def __init__(
        self,
        table: LiveTable,
        store: StateStore,
        clock: Callable[[], float],
        replica: str,
    ) -> None:
        self.table = table
        self.store = store
        self.clock = clock
        self.replica = replica
        config = table.config
        self.keep = config.shadow.keep_mismatches
        self._windows: dict[str, Window] = {}
        for name in config.models:
            slot_s = min(config.reporting.slot, self.window_s(name))
            self._windows[name] = Window(slot_s, self.keep, self._epoch(table.state(name)))
        # What the other replicas published, by model and key, as last read.
        self._others: dict[str, dict[str, SlotRecord]] = {name: {} for name in config.models}
        self._unreadable: dict[str, set[str]] = {name: set() for name in config.models}
        self._reached: dict[str, bool] = dict.fromkeys(config.models, True)
        self._publishing_ok = True
        # The sum of the closed slots in each model's window, and which slots they were.
        self._closed_totals: dict[str, tuple[frozenset[str], Totals]] = {}

    def window_s(self, model: str) -> float:
        policy = self.table.config.models[model].rollout
        return policy.window_s if policy is not None else DEFAULT_WINDOW_S

    @staticmethod
    def _epoch(state: ModelState, floor: float = float("-inf")) -> Epoch:
        return Epoch(state.serverless_percent, state.changed_at, floor)

    # --- counting (the hot path) ---------------------------------------------------

    def count_call(self, model: str, backend: Backend, status: int, seconds: float | None) -> None:
        """Count one finished call to a backend (primary or shadow) in the model's window;
        `seconds` None: an attempt with no latency of its own (a retried one)."""
        window = self._windows.get(model)
        if window is not None:
            window.count_call(self.clock(), backend is Backend.SERVERLESS, status, seconds)

    def count_shadow(self, model: str, result: str) -> None:
        """Count one shadow result: a `compare.Verdict` value or `dropped`."""
        window = self._windows.get(model)
        if window is not None:
            window.count_parity(self.clock(), result)

    def count_mismatch(self, model: str, mismatch: Mapping[str, Any]) -> None:
        """Keep one mismatch (JSON-ready, as the admin API shows it) in the current slot."""
        window = self._windows.get(model)
        if window is not None:
            window.count_mismatch(self.clock(), mismatch)

    # --- the weight's epoch ------------------------------------------------------------

    def restart(self, model: str, state: ModelState) -> None:
        """The model's weight moved to `state`'s: a new epoch, an empty window."""
        window = self._windows[model]
        window.restart(self._epoch(state, window.epoch.since))

    def adopt(self) -> None:
        """Start every model's epoch at the state as loaded from the store (at start-up,
        before any traffic): evidence other replicas published at this weight counts."""
        for name, window in self._windows.items():
            window.restart(self._epoch(self.table.state(name)))

    # --- sharing -----------------------------------------------------------------------

    async def publish(self) -> int:
        """Store every slot that closed since the last call; how many were stored. A slot
        the store does not take is tried again at the next call, while in the window."""
        now = self.clock()
        stored = 0
        for name, window in self._windows.items():
            window_s = self.window_s(name)
            for slot in window.closed(now):
                record = slot.record(self.replica, window.epoch, window.slot_s)
                if record.end <= now - window_s:
                    slot.published = True  # out of the window: nobody would read it
                    continue
                ttl_s = window_s + window.slot_s
                try:
                    await self.store.publish_window(
                        name, record.key, record.start, record.to_json(), now, ttl_s
                    )
                except StateError as exc:
                    if self._publishing_ok:
                        LOGGER.warning("gate window not shared (tried again later): %s", exc)
                        self._publishing_ok = False
                    return stored
                slot.published = True
                stored += 1
        self._publishing_ok = True
        return stored

    async def read(self, model: str) -> bool:
        """Fetch what the other replicas published of the model's window. False: the store
        did not answer, and `fleet` is this replica's own window until it does."""
        now = self.clock()
        window = self._windows[model]
        cache = self._others[model]
        unreadable = self._unreadable[model]
        try:
            keys, fresh = await self.store.window_slots(
                model, now - self.window_s(model) - window.slot_s, cache.keys() | unreadable
            )
        except StateError:
            self._reached[model] = False
            return False
        kept = {key: cache[key] for key in keys if key in cache}
        for key, data in fresh.items():
            try:
                kept[key] = SlotRecord.from_json(data)
            except (KeyError, TypeError, ValueError) as exc:
                # Said once: the key is not fetched again while it is listed.
                LOGGER.warning("%s: ignoring an unreadable window slot %s: %s", model, key, exc)
                unreadable.add(key)
        self._unreadable[model] = unreadable & set(keys)
        self._others[model] = kept
        self._reached[model] = True
        return True

    async def read_all(self) -> None:
        for name in self._windows:
            await self.read(name)

    def _records(self, model: str) -> list[SlotRecord]:
        """This replica's slots (the open one too) and the others' as last read, in the
        window and the epoch; this replica's alone while the store is out."""
        now = self.clock()
        window = self._windows[model]
        window_s = self.window_s(model)
        local = window.records(self.replica, now, window_s)
        if not self._reached[model]:
            return local
        # A slot this process still holds is counted from memory, not from its copy in the
        # store (a former process of the same replica id is read from the store).
        mine = {record.key for record in local}
        candidates = [r for key, r in self._others[model].items() if key not in mine]
        return [*local, *select(candidates, window.epoch, now, window_s)]

    def fleet(self, model: str) -> FleetWindow:
        """The model's window over the fleet now, with each replica's own figures."""
        return fleet_window(self._records(model), self.keep, shared=self._reached[model])

    def window(self, model: str) -> WindowStats:
        """The merged gate window the rollout judges (no per-replica breakdown).

        Closed slots never change, so their sum is kept while the same ones are in the
        window; each evaluation adds only this replica's open slot to a copy of it."""
        now = self.clock()
        records = self._records(model)
        closed = [r for r in records if r.end <= now]
        key = frozenset(r.key for r in closed)
        cached = self._closed_totals.get(model)
        if cached is None or cached[0] != key:
            cached = self._closed_totals[model] = (key, totals(closed))
        merged = cached[1].copy()
        for record in records:
            if record.end > now:
                merged.add(record)
        return merged.stats()
