"""The rollout controller: the tick that judges each model's gate window and steps or
rolls back.

The window is the fleet's (`shared.SharedWindows`): every replica's traffic at the model's
current weight, this replica's own counted at once; each tick reads it and judges it with
the pure gates of `rollout`, and applies what they call for through `commands`. Only the
rollout leader (`lease`) steps up or marks a rollout done, and those writes are fenced
with its lease, so a former leader can never write a step; the others judge the same
gates, show the evaluation, and leave the step to the leader. Any process may roll back:
it is the safe direction, it must not wait for a leader that may be the one cut off, and
it is compare-and-set on the state it judged, so when several replicas roll back at once
it happens once.

With `rollout.probe`, a step up first sends the readiness probe (`probe`): in a task of
its own, so a slow endpoint never delays the tick (which also follows the store and rolls
back); the step is applied when the probe answers as expected and the gates still call
for it on the state that was probed. A failed probe holds the step and says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from proxy.config.cutover import RolloutConfig
from proxy.cutover.commands import Change, Commands, to_state
from proxy.cutover.deferred import Deferred
from proxy.cutover.lease import Leadership
from proxy.cutover.probe import Probe, ProbeResult, before_step, retry_after_s
from proxy.cutover.rollout import Action, RolloutState, RolloutStatus, WindowStats, evaluate
from proxy.cutover.shared import SharedWindows, default_publisher_id
from proxy.cutover.store import FencingError, Lease, StateError
from proxy.cutover.table import LiveTable, ModelState
from proxy.models import Backend
from proxy.tasks import TaskSet

LOGGER = logging.getLogger("serving_proxy.cutover")
ROLLOUT_ACTOR = "rollout"
# Told (model, result) after every probe sent, by the rollout or by an admin change.
ProbeListener = Callable[[str, ProbeResult], None]


class Controller:
    """The gate windows and rollout decisions of one process.

    Args:
        table: the models' current states (read only).
        commands: how a step or rollback is written.
        clock: wall time (epoch seconds); samples and the rollout interval use it.
        probe: sends a model's `rollout.probe` (the app's, through the translating path);
            None: a model with a probe never steps up (there is no way to probe it).
        windows: the gate windows (default: this process's, shared through the
            commands' store under a made-up id).
        leadership: whether this process leads the rollout; None: it always does (one
            process alone, as in tests of the gates).
    """

    def __init__(
        self,
        table: LiveTable,
        commands: Commands,
        clock: Callable[[], float],
        probe: Probe | None = None,
        windows: SharedWindows | None = None,
        *,
        leadership: Leadership | None = None,
    ) -> None:
        self.table = table
        self.leadership = leadership
        self.commands = commands
        self.clock = clock
        self.on_probe: list[ProbeListener] = []
        self._probe = probe
        self.windows = windows or SharedWindows(
            table, commands.store, clock, default_publisher_id()
        )
        self._actions: dict[str, Action] = {}
        self._probes: dict[str, ProbeResult] = {}
        self._probing: set[str] = set()
        self._tasks = TaskSet()

    def count_call(self, model: str, backend: Backend, status: int, seconds: float | None) -> None:
        """Count one finished call to a backend (primary or shadow) in the model's window;
        `seconds` None: an attempt with no latency of its own (a retried one)."""
        self.windows.count_call(model, backend, status, seconds)

    def restart(self, model: str, state: ModelState) -> None:
        """Start the model's window again at `state`'s weight and forget the last
        evaluation: samples taken at another weight say nothing about this one."""
        self.windows.restart(model, state)
        self._actions.pop(model, None)

    def window(self, model: str) -> WindowStats:
        """The model's gate window over the fleet now (as last read from the store, with
        this process's own counts up to now)."""
        return self.windows.window(model)

    def last_action(self, model: str) -> Action | None:
        """The last gate evaluation (why it holds, waits or moved)."""
        return self._actions.get(model)

    def last_probe(self, model: str) -> ProbeResult | None:
        """The model's last probe result, by the rollout or an admin change."""
        return self._probes.get(model)

    def probing(self, model: str) -> bool:
        """Whether the rollout's probe of the model is in flight."""
        return model in self._probing

    async def probe(self, model: str) -> ProbeResult | None:
        """Send the model's `rollout.probe` now (an admin change raising the weight asks
        for it); remembered and counted as the rollout's are. None: no probe configured.

        Raises:
            UnknownModelError: the config serves no such model.
        """
        self.table.state(model)
        policy = self.table.config.models[model].rollout
        if policy is None or policy.probe is None:
            return None
        return await self._send(model, policy)

    async def _send(self, model: str, policy: RolloutConfig) -> ProbeResult:
        assert policy.probe is not None
        if self._probe is None:
            raise RuntimeError("a probe is configured but this cutover has no way to send it")
        result = await self._probe(model, policy.probe)
        self._probes[model] = result
        if not result.ok:
            # The status or the kind only: the note's detail may quote the endpoint's answer.
            why = result.status if result.kind == "answered" else result.kind
            LOGGER.warning("%s: readiness probe failed (%s)", model, why)
        for listener in self.on_probe:
            try:
                listener(model, result)
            except Exception:
                LOGGER.exception("probe listener failed")
        return result

    async def aclose(self) -> None:
        """Stop the probes in flight."""
        await self._tasks.aclose()

    async def tick(self) -> None:
        """Evaluate every model's rollout gates once and apply what they call for.

        Runs while the store is out as well: a failing gate then rolls this process back
        at once (stored later, as an admin rollback is), while a step up waits for the
        store. Every model is judged even if one's write fails.

        Raises:
            StateError: some write did not reach the store (after every model was judged).
        """
        failed: StateError | None = None
        for name, model in self.table.config.models.items():
            if model.rollout is None:
                continue
            # The other replicas' newest slots (a store that does not answer leaves this
            # replica's own window to judge).
            await self.windows.read(name)
            try:
                await self._judge(name, model.rollout)
            except StateError as exc:
                failed = exc
        if failed is not None:
            raise failed

    async def _judge(
        self, name: str, policy: RolloutConfig, probed: ModelState | None = None
    ) -> None:
        """`probed`: the state a probe that answered as expected was sent for."""
        now = self.clock()
        state = self.table.state(name)
        rollout = state.rollout or RolloutState(RolloutStatus.RUNNING, state.changed_at)
        window = self.windows.window(name)
        action = evaluate(policy, state.serverless_percent, rollout, window, now)
        lease = None if self.leadership is None else self.leadership.lease
        writes = action.kind == "advance" or (
            action.kind == "done" and rollout.status is not RolloutStatus.DONE
        )
        if writes and self.leadership is not None and lease is None:
            # The leader takes this step (and probes for it); shown here as judged.
            self._actions[name] = replace(
                action, reason=f"{action.reason}; the rollout leader takes the step"
            )
            return
        if action.kind == "advance" and policy.probe is not None and probed != state:
            action = self._before_step(name, policy, state, action, now)
        self._actions[name] = action
        if action.kind in ("advance", "rollback"):
            await self._move(name, state, action, now, lease)
        elif action.kind == "done" and rollout.status is not RolloutStatus.DONE:
            done = replace(
                state,
                rollout=RolloutState(RolloutStatus.DONE, now, action.reason),
                source="rollout",
                changed_at=now,
            )
            await self._fenced(name, to_state(done, action.reason), "done", state, lease)

    def _before_step(
        self, name: str, policy: RolloutConfig, state: ModelState, action: Action, now: float
    ) -> Action:
        """A step up the gates call for becomes a hold until a probe answers for it."""
        assert action.percent is not None
        if self._probe is None:
            return replace(action, kind="hold", reason="a probe is configured but cannot be sent")
        decision = before_step(
            action.percent,
            self._probes.get(name),
            name in self._probing,
            now,
            retry_after_s(policy.interval),
        )
        if decision.kind == "probe":
            self._probing.add(name)
            self._tasks.spawn(self._probe_step(name, policy, state), name=f"probe-{name}")
        return replace(action, kind="hold", reason=decision.reason, percent=None)

    async def _probe_step(self, name: str, policy: RolloutConfig, state: ModelState) -> None:
        """Probe for a step from `state`, then judge again: on success the step goes ahead
        if the gates still call for it and nothing moved meanwhile (compare-and-set)."""
        try:
            result = await self._send(name, policy)
        finally:
            self._probing.discard(name)
        try:
            await self._judge(name, policy, probed=state if result.ok else None)
        except StateError as exc:
            LOGGER.warning("%s: the step after a good probe was not stored: %s", name, exc)

    async def _fenced(
        self, name: str, change: Change, action: str, state: ModelState, lease: Lease | None
    ) -> ModelState:
        """Write a leader's change fenced with its lease; refused, this process stops
        leading and nothing is written (the state stays `state`)."""
        try:
            return await self.commands.apply(
                name, change, ROLLOUT_ACTOR, action, state, lease=lease
            )
        except FencingError as exc:
            if self.leadership is not None:
                self.leadership.lost(str(exc))
            return state

    async def _move(
        self, name: str, state: ModelState, action: Action, now: float, lease: Lease | None
    ) -> None:
        assert action.percent is not None
        status = RolloutStatus.ROLLED_BACK if action.kind == "rollback" else RolloutStatus.RUNNING
        new = ModelState(
            action.percent,
            state.shadow_percent,
            RolloutState(status, now, action.reason),
            "rollout",
            now,
        )
        try:
            # `expected=state`: if another replica or an admin moved first, do nothing.
            change = to_state(new, action.reason)
            if action.kind == "rollback":
                result = await self.commands.apply(name, change, ROLLOUT_ACTOR, action.kind, state)
            else:
                result = await self._fenced(name, change, action.kind, state, lease)
        except StateError:
            if action.kind != "rollback":
                raise
            # The store is out, and a failing gate must not wait for it: roll back here
            # now and store it later, by the same rule as an admin rollback.
            deferred = Deferred(
                "rollback",
                ROLLOUT_ACTOR,
                action.reason,
                now,
                state,
                action.percent,
                source="rollout",
            )
            result = self.commands.defer(name, deferred)
            new = result
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
