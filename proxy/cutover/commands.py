"""Every change to a model's state: validate, compare-and-set through the store, swap.

A change is validated first, written with compare-and-set on the revision this process
last read, and only then put in the table and published (mitmproxy's validate-then-commit);
a refused change leaves the old state and raises `ChangeError` with the reason. A lost race
re-reads the store and decides again on what won, so a step computed by two replicas at
once happens once. Each write carries its audit entry, also logged to `serving_proxy.audit`.

The config seeds the state: a model the store does not know starts at its configured
weights; after a run-time change, the store wins across restarts. A model whose stored
state still comes from the config follows the config when the config changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from proxy import jsoncodec
from proxy.config.base import Percent
from proxy.config.cutover import RolloutConfig
from proxy.cutover.rollout import RolloutState, RolloutStatus, next_step, rollback_target
from proxy.cutover.store import AuditEntry, StateStore
from proxy.cutover.sync import StoreSync
from proxy.cutover.table import ChangeHook, LiveTable, ModelState

AUDIT_LOGGER = logging.getLogger("serving_proxy.audit")
MAX_CAS_ATTEMPTS = 8
CONFIG_ACTOR = "config"

# From the latest state: the new state and the reason, or None when there is nothing to do.
Change = Callable[[ModelState], tuple[ModelState, str] | None]


class ChangeError(ValueError):
    """A change that was refused; the message is the reason given to the caller."""


class WeightChange(BaseModel):
    """The body of `PUT /admin/models/{model}`: validated like the config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    serverless_percent: Percent | None = None
    shadow_percent: Percent | None = None
    reason: str = ""


def parse_change(data: Any) -> WeightChange:
    """Validate a change request.

    Raises:
        ChangeError: naming the bad field.
    """
    if not isinstance(data, dict):
        raise ChangeError("the body must be a JSON object")
    try:
        change = WeightChange.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise ChangeError(f"{where}: {msg}") from None
    if change.serverless_percent is None and change.shadow_percent is None:
        raise ChangeError("give serverless_percent and/or shadow_percent")
    return change


def to_state(new: ModelState, reason: str) -> Change:
    """A change to one given state, whatever the latest state is."""
    return lambda _current: (new, reason)


def _seeding(seed: ModelState, reason: str, is_new: Callable[[], bool]) -> Change:
    """Seed from the config, unless the state is someone's choice or already the config's."""

    def change(current: ModelState) -> tuple[ModelState, str] | None:
        if is_new():
            return seed, reason
        if current.source != "config":
            return None
        if (current.serverless_percent, current.shadow_percent) == (
            seed.serverless_percent,
            seed.shadow_percent,
        ):
            return None
        return seed, reason

    return change


class Commands:
    """The compare-and-set changes of one process.

    Args:
        table: the states this process knows; changed only after a successful write.
        store: where changes are written, with their audit entries.
        sync: re-reads the store after a lost race.
        changed: told about each change this process applied.
        clock: wall time (epoch seconds) stamped on each change.
    """

    def __init__(
        self,
        table: LiveTable,
        store: StateStore,
        sync: StoreSync,
        changed: ChangeHook,
        clock: Callable[[], float],
    ) -> None:
        self.table = table
        self.store = store
        self.clock = clock
        self._sync = sync
        self._changed = changed

    async def apply(
        self, name: str, change: Change, actor: str, action: str, expected: ModelState | None
    ) -> ModelState:
        """Compare-and-set one model: compute from the latest state, write, swap.

        `change` returns the new state and the reason, or None when there is nothing to
        do (someone else already did it). With `expected`, nothing is done once the state
        is no longer that one. On a lost race the store is re-read and `change` runs again
        on what won.
        """
        for _ in range(MAX_CAS_ATTEMPTS):
            revision, current = self.table.revision(name), self.table.state(name)
            if expected is not None and current != expected:
                return current
            result = change(current)
            if result is None:
                return current
            new, reason = result
            entry = AuditEntry(
                at=new.changed_at,
                model=name,
                actor=actor,
                action=action,
                old=None if revision is None else current.to_json(),
                new=new.to_json(),
                reason=reason,
            )
            if await self.store.write(name, revision, new.to_json(), entry):
                self.table.put(name, (revision or 0) + 1, new)
                self.table.publish()
                AUDIT_LOGGER.info(jsoncodec.dumps(entry.to_json()).decode())
                self._changed(name, current, new, action)
                return new
            await self._sync.refresh(force=True)
        raise ChangeError(f"{name}: changed concurrently {MAX_CAS_ATTEMPTS} times; try again")

    async def seed(self) -> None:
        """Write the config's state for every model the store does not know, or that still
        follows the config and whose configured weights changed."""
        now = self.clock()
        for name in self.table.config.models:
            reason = "seeded from the config" if self._is_new(name) else "the config changed"
            change = _seeding(self.table.seed_state(name, now), reason, partial(self._is_new, name))
            await self.apply(name, change, CONFIG_ACTOR, "seed", None)

    def _is_new(self, name: str) -> bool:
        return self.table.revision(name) is None

    def _policy(self, name: str) -> RolloutConfig:
        policy = self.table.config.models[name].rollout
        if policy is None:
            raise ChangeError(f"{name}: no rollout is configured (models.{name}.rollout)")
        return policy

    async def set_weights(self, name: str, change: WeightChange, actor: str) -> ModelState:
        """Apply a validated `PUT /admin/models/{model}` body atomically.

        Raises:
            UnknownModelError: the config serves no such model.
            ChangeError: the change is not possible here; nothing was changed.
        """
        self.table.state(name)
        percent, shadow = change.serverless_percent, change.shadow_percent
        if not self.table.has_legacy and (
            (percent is not None and percent < 100) or (shadow is not None and shadow > 0)
        ):
            raise ChangeError(
                "backends.legacy is not configured: serverless_percent must stay 100 "
                "and shadow_percent 0"
            )

        def apply(s: ModelState) -> tuple[ModelState, str]:
            now = self.clock()
            why = change.reason or f"set by {actor}"
            new_percent = s.serverless_percent if percent is None else percent
            rollout = s.rollout
            if rollout is not None and new_percent != s.serverless_percent:
                # The interval restarts at the new weight, and the status says who moved it.
                rollout = replace(rollout, since=now, reason=why)
            new = ModelState(
                new_percent,
                s.shadow_percent if shadow is None else shadow,
                rollout,
                "admin",
                now,
            )
            return new, why

        return await self.apply(name, apply, actor, "set", None)

    async def promote(self, name: str, actor: str, reason: str = "") -> ModelState:
        """Go to the next rollout step now, skipping the gates, and keep running."""
        self.table.state(name)
        policy = self._policy(name)

        def apply(s: ModelState) -> tuple[ModelState, str]:
            step = next_step(policy.steps, s.serverless_percent)
            if step is None:
                raise ChangeError(f"{name}: already at the last step ({s.serverless_percent:g}%)")
            now = self.clock()
            why = reason or f"promoted to {step:g}%"
            new = ModelState(
                step, s.shadow_percent, RolloutState(RolloutStatus.RUNNING, now, why), "admin", now
            )
            return new, why

        return await self.apply(name, apply, actor, "promote", None)

    async def pause(self, name: str, actor: str, reason: str = "") -> ModelState:
        """Stop the automatic steps; the gates still roll back on failure."""
        return await self._set_status(name, actor, "pause", RolloutStatus.PAUSED, reason)

    async def resume(self, name: str, actor: str, reason: str = "") -> ModelState:
        """Run the rollout again from the current weight; the interval starts now."""
        return await self._set_status(name, actor, "resume", RolloutStatus.RUNNING, reason)

    async def _set_status(
        self, name: str, actor: str, action: str, status: RolloutStatus, reason: str
    ) -> ModelState:
        self.table.state(name)
        self._policy(name)

        def apply(s: ModelState) -> tuple[ModelState, str]:
            now = self.clock()
            why = reason or f"{action} by {actor}"
            return replace(s, rollout=RolloutState(status, now, why), changed_at=now), why

        return await self.apply(name, apply, actor, action, None)

    async def rollback(
        self,
        name: str,
        actor: str,
        reason: str = "",
        to: Literal["zero", "last_good"] | None = None,
    ) -> ModelState:
        """Send the model's traffic back to legacy now (0%, or the last good step)."""
        self.table.state(name)
        if not self.table.has_legacy:
            raise ChangeError("backends.legacy is not configured: nowhere to roll back to")
        policy = self.table.config.models[name].rollout

        def apply(s: ModelState) -> tuple[ModelState, str]:
            now = self.clock()
            target = 0.0
            if policy is not None:
                how = to or policy.on_failure
                target = rollback_target(
                    policy.model_copy(update={"on_failure": how}), s.serverless_percent
                )
            why = reason or f"rolled back by {actor}"
            rollout = None if policy is None else RolloutState(RolloutStatus.ROLLED_BACK, now, why)
            return ModelState(target, s.shadow_percent, rollout, "admin", now), why

        return await self.apply(name, apply, actor, "rollback", None)

    async def history(self, name: str, limit: int = 100) -> list[AuditEntry]:
        """The model's changes, newest first; rollbacks have `action == "rollback"`."""
        self.table.state(name)
        return await self.store.audit(name, limit)
