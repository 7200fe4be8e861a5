"""The cutover: which share of each model's clients goes to serverless, and every change to it.

One module per job; `Cutover` only wires them together for the app:

- `table`: the live routing table and the hot-path decision (no I/O);
- `state`: one model's state as stored; `deferred`: a rollback or pause applied here
  before the store has it, and the rule that writes it when the store is back;
- `commands`: compare-and-set changes through the store, and their audit log;
- `sync`: following the store (its announcements, and the poll loop), so every replica
  sees every change;
- `lease`: the rollout leader's lease; `presence`: the replicas' heartbeats and list;
- `controller`: the rollout controller; `shared`, `window` and `fleet`: the gate window
  it judges, this process's slots published to the store and merged with every replica's;
- `probe`: the readiness probe's result and whether a step up may go ahead;
- `rollout`: the pure gates; `store`: the SQLite / Redis compare-and-set store.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from proxy.config import ProxyConfig
from proxy.cutover.commands import ChangeError, Commands
from proxy.cutover.controller import Controller
from proxy.cutover.lease import Leadership
from proxy.cutover.presence import Presence
from proxy.cutover.probe import Probe, iso_time
from proxy.cutover.redisstore import RedisStore
from proxy.cutover.shared import SharedWindows, default_publisher_id
from proxy.cutover.sqlitestore import MEMORY, SqliteStore
from proxy.cutover.store import Lease, StateError, StateStore
from proxy.cutover.sync import DEFAULT_POLL_S, StoreSync
from proxy.cutover.table import LiveTable, ModelState
from proxy.routing import RoutingTable
from proxy.tasks import TaskSet

LOGGER = logging.getLogger("serving_proxy.cutover")

# Told (model, new state, action) after every change this process applies or sees in the
# store. Actions: `seed`, `set`, `advance`, `promote`, `pause`, `resume`, `rollback`,
# `done`, or `sync` for a change another process made.
ChangeListener = Callable[[str, ModelState, str], None]


class Cutover:
    """The routing table of one process, kept in step with the shared store.

    Args:
        config: the validated config (seeds the state, names the models).
        store: where state lives; default from `config.state` (None: in memory).
        clock: wall time (epoch seconds); the rollout interval is measured with it.
        rng: draws for requests without a client key, and shadow draws.
        poll_s: how often the rollout gates are evaluated (and the store polled when it
            announces nothing).
        probe: sends a model's `rollout.probe` before a step up (the app's, through the
            translating path); None: a model with a probe never steps up by itself.
        replica: this process's id in the store: its gate-window records, the lease holder's
            name, its heartbeat's key (unique per process); default: host and process id.

    The hot path calls `decide` and `count_call` (and the shadow `count_shadow`); they are
    the parts' own bound methods, so the facade adds no call to a request.
    """

    def __init__(
        self,
        config: ProxyConfig,
        store: StateStore | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        poll_s: float = DEFAULT_POLL_S,
        probe: Probe | None = None,
        replica: str | None = None,
    ) -> None:
        self.config = config
        self.store = store if store is not None else open_store(config.state, _password(config))
        self.on_change: list[ChangeListener] = []
        self.live = LiveTable(config, clock(), rng or random.Random())
        self.sync = StoreSync(self.live, self.store, self._changed, poll_s)
        member = replica or default_publisher_id()
        self.replica_id = member
        self.commands = Commands(self.live, self.store, self.sync, self._changed, clock, member)
        self.windows = SharedWindows(self.live, self.store, clock, member)
        self.leadership = Leadership(self.store, member, config.cutover.leader_ttl_s)
        self.controller = Controller(
            self.live, self.commands, clock, probe, self.windows, leadership=self.leadership
        )
        self.presence = Presence(self.store, member, self.sync, self.leadership)
        self._tasks = TaskSet()

        self.decide = self.live.decide
        self.count_call = self.windows.count_call
        self.count_shadow = self.windows.count_shadow
        self.count_mismatch = self.windows.count_mismatch

        self.refresh = self.sync.refresh
        self.tick = self.controller.tick
        self.set_weights = self.commands.set_weights
        self.promote = self.commands.promote
        self.pause = self.commands.pause
        self.resume = self.commands.resume
        self.rollback = self.commands.rollback
        self.history = self.commands.history
        self.persisted = self.commands.persisted

        self.models = self.live.models
        self.state = self.live.state
        self.rollout_status = self.live.rollout_status
        self.window = self.controller.window
        self.fleet_window = self.windows.fleet
        self.read_window = self.windows.read
        self.last_action = self.controller.last_action
        self.probe = self.controller.probe
        self.last_probe = self.controller.last_probe
        self.probing = self.controller.probing
        self.on_probe = self.controller.on_probe

    @property
    def table(self) -> RoutingTable:
        """The snapshot the hot path reads now (replaced whole on every change)."""
        return self.live.snapshot

    def weight(self, name: str) -> float:
        """The percent of clients sent to serverless now (raises `UnknownModelError`)."""
        return self.live.state(name).serverless_percent

    async def start(self) -> None:
        """Open the store, load or seed every model, and start polling.

        Raises:
            StateError: the store cannot be opened (start-up stops, naming `state:`).
        """
        await self.store.open()
        await self.sync.refresh(force=True)
        await self.commands.seed()
        self.windows.adopt()
        # Before the first tick, so that a replica alone leads from the start (else `run`
        # tries again).
        with contextlib.suppress(StateError):
            await self.leadership.turn()
        await self.presence.beat()
        self._tasks.spawn(self.sync.follow(self._after_poll), name="cutover-poll")
        self._tasks.spawn(self.sync.listen(), name="cutover-announcements")
        self._tasks.spawn(self.leadership.run(), name="cutover-lease")
        self._tasks.spawn(self.presence.run(), name="cutover-heartbeat")

    @property
    def stale(self) -> bool:
        """Whether this replica is cut off from the store, serving its last known table."""
        return self.presence.stale

    async def leader(self) -> Lease | None:
        """Who leads the rollout now, as the store says (raises `StateError`)."""
        return await self.store.lease()

    async def poll(self) -> None:
        """One turn of the loop `start` runs: re-read the store, write what was applied
        here while it was out, and judge the rollout gates."""
        await self._after_poll(await self.sync.poll())

    async def _after_poll(self, reachable: bool) -> None:
        if reachable:
            await self.windows.publish()
        if reachable and self.live.unsettled():
            try:
                for name, done in await self.commands.flush():
                    LOGGER.warning(
                        "%s: the %s applied here at %s while the state store was out is stored now",
                        name,
                        done.action,
                        iso_time(done.at),
                    )
            except (StateError, ChangeError):
                pass  # still pending; the next poll tries again
        await self.controller.tick()

    async def aclose(self) -> None:
        await self._tasks.aclose()
        await self.controller.aclose()
        # Gone gracefully: another replica leads at once, and the list forgets this one.
        await self.leadership.release()
        await self.presence.leave()
        await self.store.aclose()

    def _changed(self, name: str, old: ModelState, new: ModelState, action: str) -> None:
        if new.serverless_percent != old.serverless_percent:
            self.controller.restart(name, new)
        for listener in self.on_change:
            try:
                listener(name, new, action)
            except Exception:
                LOGGER.exception("cutover listener failed")


def _password(config: ProxyConfig) -> str | None:
    """The Redis password `redis.password_env` names, read into the config's secrets."""
    env = config.redis.password_env
    secret = None if env is None else config.secrets.get(env)
    return None if secret is None else secret.get_secret_value()


def open_store(url: str | None, redis_password: str | None = None) -> StateStore:
    """The store a `state:` value names: None or `:memory:` (process-local, for tests and
    embedding), a `redis://` / `rediss://` URL (with `redis_password`, from
    `redis.password_env`), or a SQLite file path.

    Raises:
        StateError: a URL scheme this proxy cannot use.
    """
    if url is None or url == MEMORY:
        return SqliteStore(MEMORY)
    if "://" in url:
        scheme = urlsplit(url).scheme
        if scheme in ("redis", "rediss", "unix"):
            return RedisStore(url, password=redis_password)
        raise StateError(f"state: {scheme}:// is not a store (use a file path or redis://)")
    return SqliteStore(url)
