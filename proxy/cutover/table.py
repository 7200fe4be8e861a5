"""The live routing table of one process and the hot-path decision. No I/O.

Holds every model's run-time state (`ModelState`) with the store revision it came from,
any rollback or pause applied here that the store does not have yet (`deferred`), and
the snapshot the hot path reads: an immutable mapping that is replaced whole, never
edited, so a request sees either the old weights or the new ones, never half of a change.
Only `commands` (after a compare-and-set write, or a deferred change) and `sync` (after
reading the store) put states here; neither the store nor the clock is touched from this
module.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from types import MappingProxyType

from proxy.config import ProxyConfig
from proxy.cutover.deferred import Deferred, overlay
from proxy.cutover.rollout import RolloutState, RolloutStatus
from proxy.cutover.state import ModelState, Source
from proxy.models import ModelRef
from proxy.routing import ClientKey, Decision, RoutingTable, Weights, decide, override_of

# ModelState and Source moved to `state`; they are still imported from here.
__all__ = ["ChangeHook", "LiveTable", "ModelState", "Source", "UnknownModelError"]


class UnknownModelError(KeyError):
    """The config serves no such model."""


# Told (model, old state, new state, action) after every change applied or seen in the store.
ChangeHook = Callable[[str, ModelState, ModelState, str], None]


class LiveTable:
    """Every configured model's state and the routing snapshot built from them.

    Args:
        config: the validated config; a model starts at its configured weights.
        now: when the process started (the seeded states' `changed_at`).
        rng: draws for requests without a client key, and shadow draws.
    """

    def __init__(self, config: ProxyConfig, now: float, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.has_legacy = config.backends.legacy is not None
        self._override_clients = frozenset(config.route_override.clients)
        self._states: dict[str, tuple[int | None, ModelState]] = {
            name: (None, self.seed_state(name, now)) for name in config.models
        }
        self._deferred: dict[str, tuple[Deferred, ...]] = {}
        self.snapshot: RoutingTable = self._build()

    def decide(
        self, ref: ModelRef, key: ClientKey | None, headers: Sequence[tuple[str, str]]
    ) -> Decision:
        """Where this request goes: `key` as `routing.client_key` read it, `headers` as
        `headers.decode` gives (for the route override)."""
        override = (
            override_of(headers, key, self._override_clients) if self._override_clients else None
        )
        return decide(self.snapshot, ref, key, self.rng, override)

    def models(self) -> list[str]:
        return list(self._states)

    def state(self, name: str) -> ModelState:
        """The state this process serves: the stored one with any deferred change on top.

        Raises `UnknownModelError`.
        """
        if name not in self._states:
            raise UnknownModelError(name)
        stored = self._states[name][1]
        pending = self._deferred.get(name)
        if not pending:
            return stored
        return overlay(stored, pending, self.config.models[name].rollout)

    def stored(self, name: str) -> ModelState:
        """The state last read from or written to the store (what a change is computed on)."""
        return self._states[name][1]

    def deferred(self, name: str) -> tuple[Deferred, ...]:
        """The rollbacks and pauses applied here that the store does not have yet, oldest
        first."""
        return self._deferred.get(name, ())

    def defer(self, name: str, change: Deferred) -> None:
        """Serve `change` on top of the stored state until it is stored (`settle`)."""
        self._deferred[name] = (*self.deferred(name), change)

    def settle(self, name: str, change: Deferred) -> None:
        """`change` is in the store now, or has nothing left to do there."""
        left = tuple(d for d in self.deferred(name) if d is not change)
        if left:
            self._deferred[name] = left
        else:
            self._deferred.pop(name, None)

    def unsettled(self) -> list[str]:
        """The models with deferred changes."""
        return list(self._deferred)

    def revision(self, name: str) -> int | None:
        """The store revision the model's state came from; None: not stored yet."""
        return self._states[name][0]

    def put(self, name: str, revision: int | None, state: ModelState) -> None:
        """Record a model's stored state; the hot path sees it (with any deferred change on
        top) after the next `publish`."""
        self._states[name] = (revision, state)

    def publish(self) -> None:
        """Replace the snapshot the hot path reads with one built from the current states."""
        self.snapshot = self._build()

    def seed_state(self, name: str, now: float) -> ModelState:
        """The state the config gives the model, as of `now`."""
        model = self.config.models[name]
        rollout = None if model.rollout is None else RolloutState(RolloutStatus.RUNNING, now)
        return ModelState(model.initial_percent, model.shadow_percent, rollout, "config", now)

    def rollout_status(self, name: str) -> str | None:
        """`running`, `paused`, `rolled_back`, `done`, or None without a rollout."""
        if self.config.models[name].rollout is None:
            return None
        rollout = self.state(name).rollout
        return str(rollout.status) if rollout else str(RolloutStatus.RUNNING)

    def _build(self) -> RoutingTable:
        states = {name: self.state(name) for name in self._states}
        return MappingProxyType(
            {
                name: Weights(state.serverless_percent, state.shadow_percent, self.has_legacy)
                for name, state in states.items()
            }
        )
