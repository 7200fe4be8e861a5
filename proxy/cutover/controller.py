"""The rollout controller: each model's gate window, and the tick that steps or rolls back.

The window holds what this process saw at the model's current weight (`window.Window`);
each tick judges it with the pure gates of `rollout` and applies what they call for
through `commands`. Any process may roll back; advancing is compare-and-set on the state
it judged, so when several replicas tick at once a step happens once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from proxy.config.cutover import RolloutConfig
from proxy.cutover.commands import Commands, to_state
from proxy.cutover.deferred import Deferred
from proxy.cutover.rollout import Action, RolloutState, RolloutStatus, WindowStats, evaluate
from proxy.cutover.store import StateError
from proxy.cutover.table import LiveTable, ModelState
from proxy.cutover.window import Window, is_error
from proxy.models import Backend

LOGGER = logging.getLogger("serving_proxy.cutover")
ROLLOUT_ACTOR = "rollout"
# The span `window()` reports for a model without a rollout (it has no gates to judge).
DEFAULT_WINDOW_S = 60.0


class Controller:
    """The gate windows and rollout decisions of one process.

    Args:
        table: the models' current states (read only).
        commands: how a step or rollback is written.
        clock: wall time (epoch seconds); samples and the rollout interval use it.
    """

    def __init__(self, table: LiveTable, commands: Commands, clock: Callable[[], float]) -> None:
        self.table = table
        self.commands = commands
        self.clock = clock
        self._windows = {name: Window() for name in table.config.models}
        self._actions: dict[str, Action] = {}

    def count_call(self, model: str, backend: Backend, status: int, seconds: float) -> None:
        """Count one finished call to a backend (primary or shadow) in the model's window."""
        window = self._windows.get(model)
        if window is None:
            return
        now = self.clock()
        if backend is Backend.SERVERLESS:
            window.serverless.append((now, not is_error(status), seconds))
        elif not is_error(status):
            window.legacy.append((now, seconds))

    def count_parity(self, model: str, matched: bool) -> None:
        """Count one compared shadow answer (not a shadow error) for the parity gate."""
        window = self._windows.get(model)
        if window is not None:
            window.parity.append((self.clock(), matched))

    def restart(self, model: str) -> None:
        """Forget the model's window and last evaluation: the weight moved, and samples
        taken at another weight say nothing about this one."""
        self._windows[model].clear()
        self._actions.pop(model, None)

    def window(self, model: str) -> WindowStats:
        """This process's gate window for the model now."""
        policy = self.table.config.models[model].rollout
        window_s = policy.window_s if policy is not None else DEFAULT_WINDOW_S
        return self._windows[model].summary(self.clock(), window_s)

    def last_action(self, model: str) -> Action | None:
        """The last gate evaluation (why it holds, waits or moved)."""
        return self._actions.get(model)

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
            try:
                await self._judge(name, model.rollout)
            except StateError as exc:
                failed = exc
        if failed is not None:
            raise failed

    async def _judge(self, name: str, policy: RolloutConfig) -> None:
        now = self.clock()
        state = self.table.state(name)
        rollout = state.rollout or RolloutState(RolloutStatus.RUNNING, state.changed_at)
        window = self._windows[name].summary(now, policy.window_s)
        action = evaluate(policy, state.serverless_percent, rollout, window, now)
        self._actions[name] = action
        if action.kind in ("advance", "rollback"):
            await self._move(name, state, action, now)
        elif action.kind == "done" and rollout.status is not RolloutStatus.DONE:
            done = replace(
                state,
                rollout=RolloutState(RolloutStatus.DONE, now, action.reason),
                source="rollout",
                changed_at=now,
            )
            await self.commands.apply(
                name, to_state(done, action.reason), ROLLOUT_ACTOR, "done", state
            )

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
        try:
            # `expected=state`: if another replica or an admin moved first, do nothing.
            result = await self.commands.apply(
                name, to_state(new, action.reason), ROLLOUT_ACTOR, action.kind, state
            )
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
