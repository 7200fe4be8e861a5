"""The live routing table of one process and the hot-path decision. No I/O.

Holds every model's run-time state (`ModelState`) with the store revision it came from,
and the snapshot the hot path reads: an immutable mapping that is replaced whole, never
edited, so a request sees either the old weights or the new ones, never half of a change.
Only `commands` (after a compare-and-set write) and `sync` (after reading the store)
put states here; neither the store nor the clock is touched from this module.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from proxy.config import ProxyConfig
from proxy.cutover.rollout import RolloutState, RolloutStatus
from proxy.models import ModelRef
from proxy.routing import ClientKey, Decision, RoutingTable, Weights, decide, override_of

Source = Literal["config", "admin", "rollout"]


class UnknownModelError(KeyError):
    """The config serves no such model."""


@dataclass(frozen=True, slots=True)
class ModelState:
    """One model's run-time state, as stored."""

    serverless_percent: float
    shadow_percent: float
    rollout: RolloutState | None
    source: Source
    changed_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "serverless_percent": self.serverless_percent,
            "shadow_percent": self.shadow_percent,
            "rollout": None
            if self.rollout is None
            else {
                "status": str(self.rollout.status),
                "since": self.rollout.since,
                "reason": self.rollout.reason,
            },
            "source": self.source,
            "changed_at": self.changed_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelState:
        ro = data.get("rollout")
        return cls(
            serverless_percent=float(data["serverless_percent"]),
            shadow_percent=float(data.get("shadow_percent", 0.0)),
            rollout=None
            if not ro
            else RolloutState(
                RolloutStatus(ro["status"]), float(ro["since"]), ro.get("reason", "")
            ),
            source=data.get("source", "admin"),
            changed_at=float(data.get("changed_at", 0.0)),
        )


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
        """Raises `UnknownModelError`."""
        if name not in self._states:
            raise UnknownModelError(name)
        return self._states[name][1]

    def revision(self, name: str) -> int | None:
        """The store revision the model's state came from; None: not stored yet."""
        return self._states[name][0]

    def put(self, name: str, revision: int | None, state: ModelState) -> None:
        """Record a model's state; the hot path sees it after the next `publish`."""
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
        return MappingProxyType(
            {
                name: Weights(state.serverless_percent, state.shadow_percent, self.has_legacy)
                for name, (_, state) in self._states.items()
            }
        )
