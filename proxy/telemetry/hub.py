"""The hub of one app's telemetry: each finished record goes to the client inventory,
the HDR statistics and the Prometheus metrics, in that order (the metrics label clients by
the inventory's ranking), and each shadow result to the statistics and the metrics. Built
once per app; the access line is written by the app after `Hub.finish`.

With several uvicorn workers, each worker writes its statistics window to
`stats_<pid>.json` in the shared multiprocess directory (at most once a second, and only
after traffic), and a report merges the other workers' files into its own live figures,
so `/admin/report` and the dashboard cover every worker, as `/metrics` does. With several
replicas, the other replicas' windows come from the state store (`fleetstats`) and are
merged the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from proxy import __version__, jsoncodec
from proxy.compare import parity_class
from proxy.config import ProxyConfig
from proxy.telemetry.fleetstats import FleetStats, replica_of
from proxy.telemetry.inventory import PASSTHROUGH, ClientInventory, is_legacy_client
from proxy.telemetry.labels import ClientLabels
from proxy.telemetry.metrics import (
    MULTIPROC_ENV,
    STATS_FILE_PREFIX,
    Metrics,
    multiprocess_enabled,
)
from proxy.telemetry.record import ExchangeRecord
from proxy.telemetry.stats import Rollout, RolloutSource, Stats, StatsSettings

LOGGER = logging.getLogger("serving_proxy")
# How soon after a request a worker's statistics file is rewritten: the report from another
# worker lags by at most this much, and an idle worker writes nothing.
PUBLISH_DELAY_S = 1.0
# A model's rollout gate window over the fleet, JSON-ready (None: no such model).
FleetSource = Callable[[str], dict[str, Any] | None]


def rollout_from(config: ProxyConfig) -> RolloutSource:
    """The configured weights, until a cutover store says otherwise.

    A model with `rollout:` has a state only the cutover store knows: `None` (shown n/a).
    """

    def source(model: str) -> Rollout:
        settings = config.models.get(model)
        if settings is None:
            return Rollout()
        state = None if settings.rollout is not None else "static"
        return Rollout(settings.initial_percent, state)

    return source


@dataclass
class Hub:
    """The telemetry of one app: None members are switched off in the config."""

    inventory: ClientInventory
    stats: Stats | None
    metrics: Metrics | None
    models: tuple[str, ...]
    rollout: RolloutSource
    clock: Callable[[], float] = time.time
    # The directory the workers share (None: one process, nothing to share).
    shared_dir: Path | None = None
    # How the records name clients (keyed hashes); the app keys it with the deployment's
    # secret once the state store is open.
    labels: ClientLabels = field(default_factory=lambda: ClientLabels(None))
    _pending: bool = field(default=False, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)
    # The gate windows over the fleet (the cutover's), and how to fetch their newest.
    _fleet: FleetSource | None = field(default=None, init=False, repr=False)
    _fleet_refresh: Callable[[], Awaitable[None]] | None = field(
        default=None, init=False, repr=False
    )
    # The statistics shared with the other replicas, and theirs as last read, by member.
    _fleet_stats: FleetStats | None = field(default=None, init=False, repr=False)
    _replica_peers: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def build(
        cls,
        config: ProxyConfig,
        *,
        registry: CollectorRegistry | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Hub:
        """Collectors on `registry` (a fresh one if None); multiprocess when the process
        was started with `PROMETHEUS_MULTIPROC_DIR` in `environ` (uvicorn workers > 1)."""
        settings = config.reporting
        rollout = rollout_from(config)
        inventory = ClientInventory(settings.client_top_n)
        stats = None
        if settings.stats:
            stats = Stats(
                StatsSettings(
                    window_s=settings.window,
                    slot_s=settings.slot,
                    history_points=settings.history_points,
                    significant_figures=settings.significant_figures,
                    client_top_n=settings.client_top_n,
                ),
                inventory=inventory,
                rollout=rollout,
            )
        metrics = None
        if settings.metrics:
            env = environ or {}
            shared = env.get(MULTIPROC_ENV) if multiprocess_enabled() else None
            metrics = Metrics(
                registry if registry is not None else CollectorRegistry(),
                inventory=inventory,
                multiprocess_dir=shared,
            )
        env = environ or {}
        shared = env.get(MULTIPROC_ENV) if config.server.workers > 1 else None
        return cls(
            inventory,
            stats,
            metrics,
            tuple(config.models),
            rollout,
            clock,
            None if shared is None or stats is None else Path(shared),
            ClientLabels.from_config(config),
        )

    @property
    def enabled(self) -> bool:
        return self.stats is not None or self.metrics is not None

    def finish(self, record: ExchangeRecord) -> None:
        """Count one finished request everywhere (once per record)."""
        if not self.enabled:
            return
        now = self.clock()
        if record.client_key is not None and record.model is not None and is_legacy_client(record):
            self.inventory.saw(
                record.model,
                record.client_key,
                record.legacy_format or PASSTHROUGH,
                now,
                record.identity,
            )
        if self.stats is not None:
            self.stats.add(record, now)
            if self.shared_dir is not None and not self._pending:
                self._schedule_publish()
        if self.metrics is not None:
            self.metrics.count(record)

    # --- sharing statistics between workers ------------------------------------------

    @property
    def stats_file(self) -> Path:
        assert self.shared_dir is not None
        return self.shared_dir / f"{STATS_FILE_PREFIX}{os.getpid()}.json"

    def _schedule_publish(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script): write now
            self.publish()
            return
        # A timer, not a task: nothing to cancel or hold a reference to at shutdown.
        self._pending = True
        loop.call_later(PUBLISH_DELAY_S, self.publish)

    def publish(self) -> None:
        """Write this worker's statistics for the other workers (atomically: a reader sees
        the old file or the new one, never half of one)."""
        self._pending = False
        if self.stats is None or self.shared_dir is None or self._closed:
            return  # closed: a timer firing after shutdown must not bring the file back
        target = self.stats_file
        partial = target.with_suffix(".tmp")
        try:
            partial.write_bytes(jsoncodec.dumps(self.stats.export(self.clock())))
            os.replace(partial, target)
        except OSError as exc:
            LOGGER.warning("cannot write worker statistics to %s: %s", target, exc.strerror)

    def _peers(self) -> list[dict[str, Any]]:
        """The other workers' last published statistics."""
        if self.shared_dir is None:
            return []
        own = self.stats_file.name
        peers = []
        for path in sorted(self.shared_dir.glob(f"{STATS_FILE_PREFIX}*.json")):
            if path.name == own:
                continue
            try:
                data = jsoncodec.loads(path.read_bytes())
            except (OSError, ValueError):
                continue  # gone or being replaced: the next report reads it
            if isinstance(data, dict) and "slots" in data:
                peers.append(data)
        return peers

    def close(self) -> None:
        """Remove this worker's statistics file as it exits (its figures leave with it)."""
        self._closed = True
        if self.shared_dir is not None:
            with contextlib.suppress(OSError):
                self.stats_file.unlink()

    def shadow_result(self, model: str, result: str) -> None:
        """Count one shadow result: a `compare.Verdict` value or `dropped`.

        The metric keeps the verdict as it is (`shape_mismatch`, `value_mismatch`, …); the
        report folds them into `match`, `mismatch`, `error`, `dropped`.
        """
        if self.stats is not None:
            self.stats.add_parity(model, parity_class(result), self.clock())
        if self.metrics is not None:
            self.metrics.count_shadow(model, result)

    def probe_result(self, model: str, ok: bool) -> None:
        """Count one readiness probe of the model's new endpoint (`ok` or `failed`)."""
        if self.stats is not None:
            self.stats.add_event(model, "probes_ok" if ok else "probes_failed", self.clock())
        if self.metrics is not None:
            self.metrics.count_probe(model, "ok" if ok else "failed")

    def token_fetch(self, url: str, ok: bool) -> None:
        """Count one token fetch for a backend's `auth: databricks` (metrics only)."""
        if self.metrics is not None:
            self.metrics.count_token_fetch(url, "ok" if ok else "failed")

    def set_rollout_source(self, source: RolloutSource) -> None:
        """Read weights and rollout states from the cutover store from now on."""
        self.rollout = source
        if self.stats is not None:
            self.stats.rollout = source

    def note_rollout(self, model: str, event: str | None = None) -> None:
        """A model's weight or state changed (a rollback names itself in `event`)."""
        if self.stats is not None:
            self.stats.note_rollout(model, self.clock(), event)
        if self.metrics is not None:
            self.metrics.set_weights([(model, self.rollout(model).weight)])

    def in_flight(self, delta: int) -> None:
        if self.metrics is not None:
            self.metrics.in_flight.inc(delta)

    def exposition(self) -> tuple[bytes, str]:
        """`/metrics`: the weights are refreshed first, so a scrape shows them as they are."""
        assert self.metrics is not None
        self.metrics.set_weights((model, self.rollout(model).weight) for model in self.models)
        return self.metrics.exposition()

    def report(self) -> dict[str, Any]:
        """What `GET /admin/report` answers: this worker's statistics, the other workers'
        last published ones and the other replicas' last read (`refresh_fleet`), merged,
        JSON-ready."""
        assert self.stats is not None
        now = self.clock()
        for model in self.models:
            # A configured model with no traffic yet still gets its row (all n/a); a
            # weight that changed since the last request gets its point.
            self.stats.note_rollout(model, now)
        workers = self._peers()
        others = self._replica_peers
        snapshot = self.stats.snapshot(now, [*workers, *others.values()])
        if self._fleet is not None:
            for model, view in snapshot["models"].items():
                view["gate_window"] = self._fleet(model)
        sharing = self._fleet_stats
        return {
            "version": __version__,
            "workers": 1 + len(workers),
            "replicas": 1 + len({replica_of(member) for member in others}),
            "replicas_reachable": sharing is None or sharing.reachable,
            **snapshot,
        }

    def set_fleet_source(
        self, source: FleetSource, refresh: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Show each model's rollout gate window over the fleet in the report, fetching
        the other replicas' newest with `refresh` first (`refresh_fleet`)."""
        self._fleet = source
        self._fleet_refresh = refresh

    def share_stats(self, sharing: FleetStats) -> None:
        """Merge the other replicas' statistics, as `sharing` reads them, into the report."""
        self._fleet_stats = sharing

    async def refresh_fleet(self) -> None:
        """Fetch the other replicas' newest window slots and statistics before a report."""
        if self._fleet_refresh is not None:
            await self._fleet_refresh()
        if self._fleet_stats is not None:
            self._replica_peers = await self._fleet_stats.peers()
