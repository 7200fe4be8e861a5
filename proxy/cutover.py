"""The live routing table and every change to it: validate, write through the store, swap.

State, no I/O of its own: reads and writes go through a `StateStore` (SQLite or Redis).
The hot path reads `table`, an immutable snapshot that is replaced whole, never edited,
so a request sees either the old weights or the new ones, never half of a change
(mitmproxy's validate-then-commit). A change is validated first, written with
compare-and-set, and only then swapped in; a bad change leaves the old state and raises
`ChangeError` with the reason.

Every process polls the store's generation counter every `poll_s` (0.25 s), so a change
made through one replica is in force on all of them well within a second; the same loop
evaluates the rollout gates (`rollout.py`) on what this process has seen. Any process may
roll back; advancing is compare-and-set on the weight it read, so it happens once.

The config seeds the state: a model the store does not know starts at its configured
weights; after a run-time change, the store wins across restarts. A model whose stored
state still comes from the config follows the config when the config changes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from proxy import jsoncodec
from proxy.config import Percent, ProxyConfig, RolloutConfig
from proxy.models import Backend, ModelRef
from proxy.rollout import (
    Action,
    RolloutState,
    RolloutStatus,
    WindowStats,
    evaluate,
    next_step,
    rollback_target,
)
from proxy.routing import (
    Decision,
    RoutingTable,
    Weights,
    client_key,
    decide,
    override_of,
)
from proxy.shadow import TaskSet
from proxy.state import AuditEntry, StateError, StateStore, Stored, open_store

LOGGER = logging.getLogger("serving_proxy.cutover")
AUDIT_LOGGER = logging.getLogger("serving_proxy.audit")
DEFAULT_POLL_S = 0.25
# Samples kept per model and kind; a busy model's window is then its newest samples.
MAX_WINDOW_SAMPLES = 20_000
MAX_CAS_ATTEMPTS = 8
ROLLOUT_ACTOR = "rollout"
CONFIG_ACTOR = "config"
Source = Literal["config", "admin", "rollout"]


class ChangeError(ValueError):
    """A change that was refused; the message is the reason given to the caller."""


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


class WeightChange(BaseModel):
    """The body of `PUT /admin/models/{model}`: validated like the config (issue 3 §3)."""

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


class Window:
    """What this process saw of one model since its current weight took effect."""

    def __init__(self) -> None:
        self.serverless: deque[tuple[float, bool, float]] = deque(maxlen=MAX_WINDOW_SAMPLES)
        self.legacy: deque[tuple[float, float]] = deque(maxlen=MAX_WINDOW_SAMPLES)
        self.parity: deque[tuple[float, bool]] = deque(maxlen=MAX_WINDOW_SAMPLES)

    def clear(self) -> None:
        self.serverless.clear()
        self.legacy.clear()
        self.parity.clear()

    def summary(self, now: float, window_s: float) -> WindowStats:
        start = now - window_s
        for samples in (self.serverless, self.legacy, self.parity):
            while samples and samples[0][0] < start:
                samples.popleft()
        return WindowStats(
            serverless_calls=len(self.serverless),
            serverless_errors=sum(1 for _, ok, _ in self.serverless if not ok),
            serverless_p99_s=_p99([s for _, _, s in self.serverless]),
            legacy_calls=len(self.legacy),
            legacy_p99_s=_p99([s for _, s in self.legacy]),
            parity_samples=len(self.parity),
            parity_matches=sum(1 for _, ok in self.parity if ok),
        )


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    values.sort()
    return values[min(len(values) - 1, int(0.99 * len(values)))]


def is_error(status: int) -> bool:
    """A serverless answer that counts against the error-rate gate: 5xx, or 429 (capacity).

    Other 4xx are the client's own mistakes, and legacy answered them the same way.
    """
    return status >= 500 or status == 429


ChangeListener = Callable[[str, ModelState, str], None]
Change = Callable[[ModelState], tuple[ModelState, str] | None]


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


def _to(new: ModelState, reason: str) -> Change:
    return lambda _current: (new, reason)


class Cutover:
    """The routing table of one process, kept in step with the shared store.

    Args:
        config: the validated config (seeds the state, names the models).
        store: where state lives; default from `config.state` (None: in memory).
        clock: wall time (epoch seconds); the rollout interval is measured with it.
        rng: draws for requests without a client key, and shadow draws.
        poll_s: how often the store is polled and the rollout gates are evaluated.

    Read side for the admin API and the reports (issue 4), all plain methods:
    `models()`, `state(model)`, `weight(model)`, `rollout_status(model)`,
    `window(model)`, `last_action(model)`, `view(model)`, `history(model)` (async, the
    audit log: each entry's `action` is `seed`, `set`, `advance`, `promote`, `pause`,
    `resume`, `rollback` or `done`, so rollbacks are marked). `on_change` listeners are
    called with (model, new state, action) after every change this process applies or
    sees through the store.
    """

    def __init__(
        self,
        config: ProxyConfig,
        store: StateStore | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        self.config = config
        self.store = store if store is not None else open_store(config.state)
        self.clock = clock
        self.rng = rng or random.Random()
        self.poll_s = poll_s
        self.on_change: list[ChangeListener] = []
        self._has_legacy = config.backends.legacy is not None
        self._override_clients = frozenset(config.route_override.clients)
        now = clock()
        self._states: dict[str, tuple[int | None, ModelState]] = {
            name: (None, self._seed_state(name, now)) for name in config.models
        }
        self._windows = {name: Window() for name in config.models}
        self._actions: dict[str, Action] = {}
        self._generation = -1
        self._tasks = TaskSet()
        self._store_ok = True
        self.table: RoutingTable = self._build_table()

    # --- the hot path -----------------------------------------------------------------------

    def decide(
        self, ref: ModelRef, headers: Sequence[tuple[str, str]], client_host: str | None
    ) -> Decision:
        """Where this request goes (issue 3 §2, §7); `headers` as `headers.decode` gives."""
        key = client_key(headers, client_host, self.config.client_key)
        override = (
            override_of(headers, key, self._override_clients) if self._override_clients else None
        )
        return decide(self.table, ref, key, self.rng, override)

    def observe(self, model: str, backend: Backend, status: int, seconds: float) -> None:
        """One finished call to a backend (primary or shadow), for the rollout gates."""
        window = self._windows.get(model)
        if window is None:
            return
        now = self.clock()
        if backend is Backend.SERVERLESS:
            window.serverless.append((now, not is_error(status), seconds))
        elif not is_error(status):
            window.legacy.append((now, seconds))

    def observe_parity(self, model: str, matched: bool) -> None:
        """One compared shadow answer (not a shadow error), for the parity gate."""
        window = self._windows.get(model)
        if window is not None:
            window.parity.append((self.clock(), matched))

    # --- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, load or seed every model, and start polling.

        Raises:
            StateError: the store cannot be opened (start-up stops, naming `state:`).
        """
        await self.store.open()
        await self.refresh(force=True)
        await self._seed()
        self._tasks.spawn(self._loop(), name="cutover-poll")

    async def aclose(self) -> None:
        await self._tasks.aclose()
        await self.store.aclose()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
                await self.tick()
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

    # --- reading the store ------------------------------------------------------------------

    async def refresh(self, *, force: bool = False) -> bool:
        """Reload the state if the store's generation moved. True if anything changed."""
        generation = await self.store.generation()
        if generation == self._generation and not force:
            return False
        stored = await self.store.load()
        self._generation = generation
        changed = False
        for name in self.config.models:
            item = stored.get(name)
            if item is not None:
                changed |= self._adopt(name, item)
        if changed:
            self.table = self._build_table()
        return changed

    def _adopt(self, name: str, item: Stored) -> bool:
        revision, old = self._states[name]
        if revision == item.revision:
            return False
        new = ModelState.from_json(item.data)
        self._states[name] = (item.revision, new)
        if new != old:
            self._changed(name, old, new, "sync")
        return True

    def _changed(self, name: str, old: ModelState, new: ModelState, action: str) -> None:
        if new.serverless_percent != old.serverless_percent:
            # Samples taken at another weight say nothing about this one.
            self._windows[name].clear()
            self._actions.pop(name, None)
        for listener in self.on_change:
            try:
                listener(name, new, action)
            except Exception:
                LOGGER.exception("cutover listener failed")

    async def _seed(self) -> None:
        now = self.clock()
        for name in self.config.models:
            revision, _ = self._states[name]
            reason = "seeded from the config" if revision is None else "the config changed"
            change = _seeding(self._seed_state(name, now), reason, partial(self._is_new, name))
            await self._apply(name, change, CONFIG_ACTOR, "seed", None)

    def _is_new(self, name: str) -> bool:
        return self._states[name][0] is None

    def _seed_state(self, name: str, now: float) -> ModelState:
        model = self.config.models[name]
        rollout = None if model.rollout is None else RolloutState(RolloutStatus.RUNNING, now)
        return ModelState(model.initial_percent, model.shadow_percent, rollout, "config", now)

    def _build_table(self) -> RoutingTable:
        return MappingProxyType(
            {
                name: Weights(state.serverless_percent, state.shadow_percent, self._has_legacy)
                for name, (_, state) in self._states.items()
            }
        )

    # --- changing state ---------------------------------------------------------------------

    async def _apply(
        self,
        name: str,
        change: Callable[[ModelState], tuple[ModelState, str] | None],
        actor: str,
        action: str,
        expected: ModelState | None,
    ) -> ModelState:
        """Compare-and-set one model: compute from the latest state, write, swap.

        `change` returns the new state and the reason, or None when there is nothing to
        do (someone else already did it). On a lost race the store is re-read and `change`
        runs again on what won.
        """
        for _ in range(MAX_CAS_ATTEMPTS):
            revision, current = self._states[name]
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
                self._states[name] = ((revision or 0) + 1, new)
                self.table = self._build_table()
                AUDIT_LOGGER.info(jsoncodec.dumps(entry.to_json()).decode())
                self._changed(name, current, new, action)
                return new
            await self.refresh(force=True)
        raise ChangeError(f"{name}: changed concurrently {MAX_CAS_ATTEMPTS} times; try again")

    def _model(self, name: str) -> ModelState:
        if name not in self._states:
            raise UnknownModelError(name)
        return self._states[name][1]

    def _policy(self, name: str) -> RolloutConfig:
        policy = self.config.models[name].rollout
        if policy is None:
            raise ChangeError(f"{name}: no rollout is configured (models.{name}.rollout)")
        return policy

    async def set_weights(self, name: str, change: WeightChange, actor: str) -> ModelState:
        """Apply a validated `PUT /admin/models/{model}` body atomically.

        Raises:
            UnknownModelError: the config serves no such model.
            ChangeError: the change is not possible here; nothing was changed.
        """
        self._model(name)
        percent, shadow = change.serverless_percent, change.shadow_percent
        if not self._has_legacy and (
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

        return await self._apply(name, apply, actor, "set", None)

    async def promote(self, name: str, actor: str, reason: str = "") -> ModelState:
        """Go to the next rollout step now, skipping the gates, and keep running."""
        self._model(name)
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

        return await self._apply(name, apply, actor, "promote", None)

    async def pause(self, name: str, actor: str, reason: str = "") -> ModelState:
        """Stop the automatic steps; the gates still roll back on failure."""
        return await self._set_status(name, actor, "pause", RolloutStatus.PAUSED, reason)

    async def resume(self, name: str, actor: str, reason: str = "") -> ModelState:
        """Run the rollout again from the current weight; the interval starts now."""
        return await self._set_status(name, actor, "resume", RolloutStatus.RUNNING, reason)

    async def _set_status(
        self, name: str, actor: str, action: str, status: RolloutStatus, reason: str
    ) -> ModelState:
        self._model(name)
        self._policy(name)

        def apply(s: ModelState) -> tuple[ModelState, str]:
            now = self.clock()
            why = reason or f"{action} by {actor}"
            return replace(s, rollout=RolloutState(status, now, why), changed_at=now), why

        return await self._apply(name, apply, actor, action, None)

    async def rollback(
        self,
        name: str,
        actor: str,
        reason: str = "",
        to: Literal["zero", "last_good"] | None = None,
    ) -> ModelState:
        """Send the model's traffic back to legacy now (0%, or the last good step)."""
        self._model(name)
        if not self._has_legacy:
            raise ChangeError("backends.legacy is not configured: nowhere to roll back to")
        policy = self.config.models[name].rollout

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

        return await self._apply(name, apply, actor, "rollback", None)

    # --- the rollout controller -------------------------------------------------------------

    async def tick(self) -> None:
        """Evaluate every model's rollout gates once and apply what they call for."""
        now = self.clock()
        for name, model in self.config.models.items():
            policy = model.rollout
            if policy is None:
                continue
            _, state = self._states[name]
            rollout = state.rollout or RolloutState(RolloutStatus.RUNNING, state.changed_at)
            window = self._windows[name].summary(now, policy.window_s)
            action = evaluate(policy, state.serverless_percent, rollout, window, now)
            self._actions[name] = action
            if action.kind in ("advance", "rollback"):
                assert action.percent is not None
                await self._move(name, state, action, now)
            elif action.kind == "done" and rollout.status is not RolloutStatus.DONE:
                done = replace(
                    state,
                    rollout=RolloutState(RolloutStatus.DONE, now, action.reason),
                    source="rollout",
                    changed_at=now,
                )
                await self._apply(name, _to(done, action.reason), ROLLOUT_ACTOR, "done", state)

    async def _move(self, name: str, state: ModelState, action: Action, now: float) -> None:
        assert action.percent is not None
        status = RolloutStatus.ROLLED_BACK if action.kind == "rollback" else RolloutStatus.RUNNING
        new = ModelState(
            action.percent,
            state.shadow_percent,
            RolloutState(status, now, action.reason),
            "rollout",
            now,
        )
        # `expected=state`: if another replica or an admin moved first, do nothing.
        result = await self._apply(name, _to(new, action.reason), ROLLOUT_ACTOR, action.kind, state)
        if result is new:
            log = LOGGER.warning if action.kind == "rollback" else LOGGER.info
            log(
                "%s: %s %g%% -> %g%%: %s",
                name,
                action.kind,
                state.serverless_percent,
                action.percent,
                action.reason,
            )

    # --- read side --------------------------------------------------------------------------

    def models(self) -> list[str]:
        return list(self._states)

    def state(self, name: str) -> ModelState:
        """Raises `UnknownModelError`."""
        return self._model(name)

    def weight(self, name: str) -> float:
        """The percent of clients sent to serverless now."""
        return self._model(name).serverless_percent

    def rollout_status(self, name: str) -> str | None:
        """`running`, `paused`, `rolled_back`, `done`, or None without a rollout."""
        if self.config.models[name].rollout is None:
            return None
        rollout = self._model(name).rollout
        return str(rollout.status) if rollout else str(RolloutStatus.RUNNING)

    def window(self, name: str) -> WindowStats:
        """This process's gate window for the model now."""
        policy = self.config.models[name].rollout
        window_s = policy.window_s if policy is not None else 60.0
        return self._windows[name].summary(self.clock(), window_s)

    def last_action(self, name: str) -> Action | None:
        """The last gate evaluation (why it holds, waits or moved)."""
        return self._actions.get(name)

    async def history(self, name: str, limit: int = 100) -> list[AuditEntry]:
        """The model's changes, newest first; rollbacks have `action == "rollback"`."""
        self._model(name)
        return await self.store.audit(name, limit)

    def view(self, name: str) -> dict[str, Any]:
        """The JSON the admin API shows for one model (without shadow parity)."""
        state = self._model(name)
        policy = self.config.models[name].rollout
        out: dict[str, Any] = {
            "model": name,
            "serverless_percent": state.serverless_percent,
            "shadow_percent": state.shadow_percent,
            "source": state.source,
            "changed_at": state.changed_at,
            "rollout": None,
        }
        if policy is not None:
            rollout = state.rollout or RolloutState(RolloutStatus.RUNNING, state.changed_at)
            action = self._actions.get(name)
            out["rollout"] = {
                "status": str(rollout.status),
                "since": rollout.since,
                "reason": rollout.reason,
                "steps": list(policy.steps),
                "next_step": next_step(policy.steps, state.serverless_percent),
                "interval_s": policy.interval,
                "window_s": policy.window_s,
                "on_failure": policy.on_failure,
                "evaluation": None
                if action is None
                else {
                    "action": action.kind,
                    "reason": action.reason,
                    "gates": [
                        {
                            "gate": g.gate,
                            "outcome": str(g.outcome),
                            "value": g.value,
                            "limit": g.limit,
                            "samples": g.samples,
                            "min_samples": g.min_samples,
                            "reason": g.reason,
                        }
                        for g in action.gates
                    ],
                },
            }
        window = self.window(name)
        out["window"] = {
            "serverless_calls": window.serverless_calls,
            "serverless_errors": window.serverless_errors,
            "serverless_p99_ms": None
            if window.serverless_p99_s is None
            else window.serverless_p99_s * 1000,
            "legacy_calls": window.legacy_calls,
            "legacy_p99_ms": None if window.legacy_p99_s is None else window.legacy_p99_s * 1000,
            "parity_samples": window.parity_samples,
            "parity_matches": window.parity_matches,
        }
        return out
