"""Every change to a model's state: validate, compare-and-set through the store, swap.

A change is validated first, written with compare-and-set on the revision this process
last read, and only then put in the table and published (mitmproxy's validate-then-commit);
a refused change leaves the old state and raises `ChangeError` with the reason. A lost race
re-reads the store and decides again on what won, so a step computed by two replicas at
once happens once. Each write carries its audit entry, also logged to `serving_proxy.audit`.

A rollback and a pause are the exceptions to validate-then-commit: they are what an
operator reaches for when something is wrong, store outage included, so they are applied
to this process first (`deferred`) and written after; if the store does not take them
within `PERSIST_WAIT_S` they stay applied here, `persisted` is false, and `flush` writes
them when the store answers again (the rule is in `deferred`). Any other change while a
model has one pending writes that first, and fails with `StateError` if it cannot.

The config seeds the state: a model the store does not know starts at its configured
weights; after a run-time change, the store wins across restarts. A model whose stored
state still comes from the config follows the config when the config changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, ValidationError

from proxy import jsoncodec
from proxy.config.base import Percent
from proxy.config.cutover import RolloutConfig
from proxy.cutover.deferred import Deferred, RollbackTo, on_top, rolled_back
from proxy.cutover.rollout import RolloutState, RolloutStatus, next_step
from proxy.cutover.store import AuditEntry, Lease, StateError, StateStore
from proxy.cutover.sync import StoreSync
from proxy.cutover.table import ChangeHook, LiveTable, ModelState

AUDIT_LOGGER = logging.getLogger("serving_proxy.audit")
LOGGER = logging.getLogger("serving_proxy.cutover")
MAX_CAS_ATTEMPTS = 8
CONFIG_ACTOR = "config"
# How long a rollback or pause request waits for the store before it answers that the
# change is applied here but not stored yet (it is already in force either way).
PERSIST_WAIT_S = 1.0

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


def _replay(
    deferred: Deferred, policy: RolloutConfig | None, stored: ModelState
) -> tuple[ModelState, str] | None:
    new = on_top(deferred, stored, policy)
    return None if new is None else (new, deferred.reason)


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
        replica: this replica's id, named in each audit entry it writes.
    """

    def __init__(
        self,
        table: LiveTable,
        store: StateStore,
        sync: StoreSync,
        changed: ChangeHook,
        clock: Callable[[], float],
        replica: str,
    ) -> None:
        self.table = table
        self.store = store
        self.clock = clock
        self.replica = replica
        self._sync = sync
        self._changed = changed
        self._flushing = anyio.Lock()

    async def apply(
        self,
        name: str,
        change: Change,
        actor: str,
        action: str,
        expected: ModelState | None,
        *,
        settles: Deferred | None = None,
        lease: Lease | None = None,
    ) -> ModelState:
        """Compare-and-set one model: compute from the latest stored state, write, swap.

        `change` returns the new state and the reason, or None when there is nothing to
        do (someone else already did it). With `expected`, nothing is done once the state
        is no longer that one. On a lost race the store is re-read and `change` runs again
        on what won. A rollback or pause still pending here is written first (`settles`
        names the one this call writes). With `lease`, the write is fenced: the store
        takes it only while that lease is the rollout leader's.

        Raises:
            FencingError: `lease` is no longer the leader's; nothing was changed.
            StateError: the store did not answer; nothing was changed.
            ChangeError: refused by `change`, or lost the race too often.
        """
        if settles is None and self.table.deferred(name):
            await self.flush(name)
        for _ in range(MAX_CAS_ATTEMPTS):
            revision, stored = self.table.revision(name), self.table.stored(name)
            before = self.table.state(name)
            if expected is not None and before != expected:
                return before
            result = change(stored)
            if result is None:
                if settles is not None:
                    self._settle(name, settles, before, action)
                return self.table.state(name)
            new, reason = result
            entry = AuditEntry(
                at=new.changed_at,
                model=name,
                actor=actor,
                action=action,
                old=None if revision is None else stored.to_json(),
                new=new.to_json(),
                reason=reason,
                replica=self.replica,
                fencing_token=None if lease is None else lease.fencing_token,
            )
            if lease is None:
                written = await self.store.write(name, revision, new.to_json(), entry)
            else:
                written = await self.store.write_fenced(name, revision, new.to_json(), entry, lease)
            if written:
                self.table.put(name, (revision or 0) + 1, new)
                AUDIT_LOGGER.info(jsoncodec.dumps(entry.to_json()).decode())
                if settles is None:
                    self.table.publish()
                    self._changed(name, before, new, action)
                else:
                    self._settle(name, settles, before, action)
                return new
            await self._sync.refresh(force=True)
        raise ChangeError(f"{name}: changed concurrently {MAX_CAS_ATTEMPTS} times; try again")

    def _settle(self, name: str, done: Deferred, before: ModelState, action: str) -> None:
        self.table.settle(name, done)
        self.table.publish()
        after = self.table.state(name)
        if after != before:
            self._changed(name, before, after, action)

    def defer(self, name: str, deferred: Deferred) -> ModelState:
        """Apply a rollback or pause here now, without the store; `flush` writes it."""
        before = self.table.state(name)
        self.table.defer(name, deferred)
        self.table.publish()
        after = self.table.state(name)
        if after != before:
            self._changed(name, before, after, deferred.action)
        return after

    async def first(self, name: str, deferred: Deferred) -> ModelState:
        """Apply a rollback or pause here now, then write it (within `PERSIST_WAIT_S`);
        kept and written by `flush` later when the store does not take it now."""
        self.defer(name, deferred)
        try:
            with anyio.move_on_after(PERSIST_WAIT_S):
                await self.flush(name)
        except (StateError, ChangeError) as exc:
            LOGGER.warning(
                "%s: %s applied here, not stored yet (it will be when the store answers): %s",
                name,
                deferred.action,
                exc,
            )
        return self.table.state(name)

    def persisted(self, name: str) -> bool:
        """Whether the store holds what this process serves for the model."""
        return not self.table.deferred(name)

    async def flush(self, name: str | None = None) -> list[tuple[str, Deferred]]:
        """Write the rollbacks and pauses applied here while the store was out, oldest
        first, each on top of whatever the store holds now (the rule in `deferred`).
        Returns what is settled now, with its model.

        Raises:
            StateError: the store did not answer; what is left stays pending.
            ChangeError: lost the race too often; what is left stays pending.
        """
        done: list[tuple[str, Deferred]] = []
        async with self._flushing:
            for model in [name] if name is not None else self.table.unsettled():
                for deferred in self.table.deferred(model):
                    await self.apply(
                        model,
                        partial(_replay, deferred, self.table.config.models[model].rollout),
                        deferred.actor,
                        deferred.action,
                        None,
                        settles=deferred,
                    )
                    done.append((model, deferred))
        return done

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
        """Stop the automatic steps; the gates still roll back on failure. Applied here at
        once, stored when the store answers (`persisted`)."""
        self.table.state(name)
        self._policy(name)
        now = self.clock()
        why = reason or f"pause by {actor}"
        return await self.first(name, Deferred("pause", actor, why, now, self.table.state(name)))

    async def resume(self, name: str, actor: str, reason: str = "") -> ModelState:
        """Run the rollout again from the current weight; the interval starts now."""
        self.table.state(name)
        self._policy(name)

        def apply(s: ModelState) -> tuple[ModelState, str]:
            now = self.clock()
            why = reason or f"resume by {actor}"
            return replace(
                s, rollout=RolloutState(RolloutStatus.RUNNING, now, why), changed_at=now
            ), why

        return await self.apply(name, apply, actor, "resume", None)

    async def rollback(
        self,
        name: str,
        actor: str,
        reason: str = "",
        to: RollbackTo | None = None,
    ) -> ModelState:
        """Send the model's traffic back to legacy now (0%, or the last good step).
        Applied here at once, stored when the store answers (`persisted`)."""
        current = self.table.state(name)
        if not self.table.has_legacy:
            raise ChangeError("backends.legacy is not configured: nowhere to roll back to")
        policy = self.table.config.models[name].rollout
        now = self.clock()
        why = reason or f"rolled back by {actor}"
        target = rolled_back(current, policy, to, now, why).serverless_percent
        return await self.first(name, Deferred("rollback", actor, why, now, current, target))

    async def history(self, name: str, limit: int = 100) -> list[AuditEntry]:
        """The model's changes, newest first; rollbacks have `action == "rollback"`."""
        self.table.state(name)
        return await self.store.audit(name, limit)
