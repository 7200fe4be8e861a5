"""Prometheus metrics of the proxy, on a private `CollectorRegistry` passed in.

Touches the outside world only through prometheus-client (memory, or the mmap files of
its multiprocess mode when uvicorn runs several workers). Never a body, never a raw
client key: client labels are the hashed keys the middleware made, and at most the top N
per model are named, the rest counted as `other`.

Names follow Prometheus naming (base units: seconds, ratios 0–1; `_total` on counters)
and, where they apply, the OpenTelemetry HTTP server conventions
(`http.server.request.duration` → a duration histogram in seconds; `http.server.active_requests`
→ the in-flight gauge).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from proxy.models import Backend
from proxy.telemetry.accesslog import outcome
from proxy.telemetry.inventory import ClientInventory, is_legacy_client
from proxy.telemetry.record import ExchangeRecord

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The shared directory also holds each worker's statistics, `stats_<pid>.json` (`hub`).
STATS_FILE_PREFIX = "stats_"
NONE = "none"
# Fine at the bottom (1 ms must not share a bucket with 2 ms), coarse up to the 60 s
# default upstream timeout.
REQUEST_BUCKETS_S = (
    0.0005,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Translation is CPU time on the proxy, far below a request: finer buckets.
TRANSLATE_BUCKETS_S = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
# A cold start takes seconds to minutes.
HOLD_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


_STATUS_CLASSES = (NONE, "1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> str:
    """`2xx` … `5xx`; `none` when no response was started (the client went away)."""
    index = status // 100
    return _STATUS_CLASSES[index] if 0 <= index < len(_STATUS_CLASSES) else f"{index}xx"


@contextlib.contextmanager
def multiprocess_directory(path: str | None) -> Iterator[str]:
    """The directory the workers share for metrics and statistics, emptied first: files
    left by an earlier run would be added to this one's numbers. A temporary one (None) is
    removed at exit."""
    if path is None:
        made = tempfile.mkdtemp(prefix="serving-proxy-metrics-")
        try:
            yield made
        finally:
            shutil.rmtree(made, ignore_errors=True)
        return
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    # *.db: prometheus-client's values; stats_*.json: each worker's HDR statistics.
    for pattern in ("*.db", f"{STATS_FILE_PREFIX}*.json"):
        for stale in directory.glob(pattern):
            stale.unlink()
    yield str(directory)


def multiprocess_enabled() -> bool:
    """Was prometheus-client imported in multiprocess mode (the env var set before import)?"""
    return values.ValueClass is not values.MutexValue


class Metrics:
    """The proxy's collectors, registered on `registry`.

    Args:
        registry: a private registry (fresh per app, fresh per test).
        inventory: the legacy client inventory that decides which client keys are named.
        multiprocess_dir: serve `/metrics` from the multiprocess files in this directory
            (every worker's numbers added up); None serves `registry` itself.

    Raises:
        RuntimeError: multiprocess asked for, but prometheus-client was imported without
            `PROMETHEUS_MULTIPROC_DIR`, so this process's values would not be shared.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        inventory: ClientInventory | None = None,
        multiprocess_dir: str | None = None,
    ) -> None:
        if multiprocess_dir is not None and not multiprocess_enabled():
            raise RuntimeError(
                f"{MULTIPROC_ENV} must be set before prometheus_client is first imported"
            )
        self.registry = registry
        self.inventory = inventory or ClientInventory()
        self.multiprocess_dir = multiprocess_dir
        self.request_duration = Histogram(
            "serving_proxy_request_duration_seconds",
            "Time from the request's arrival to the end of the proxy's answer.",
            ("model", "backend", "legacy_format", "status_class"),
            buckets=REQUEST_BUCKETS_S,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "serving_proxy_upstream_duration_seconds",
            "Time spent waiting on the upstream (legacy or serverless), failures included.",
            ("model", "backend"),
            buckets=REQUEST_BUCKETS_S,
            registry=registry,
        )
        self.translate_duration = Histogram(
            "serving_proxy_translate_duration_seconds",
            "Time spent translating a legacy request and its answer (protocols.md §4, §5).",
            ("model", "legacy_format"),
            buckets=TRANSLATE_BUCKETS_S,
            registry=registry,
        )
        self.requests = Counter(
            "serving_proxy_requests",
            "Requests answered, by where they went and how they ended.",
            ("model", "backend", "legacy_format", "status_class", "outcome"),
            registry=registry,
        )
        self.in_flight = Gauge(
            "serving_proxy_requests_in_flight",
            "Invocation requests being served now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.weight = Gauge(
            "serving_proxy_cutover_weight_ratio",
            "Share of a model's requests routed to serverless now (0 to 1).",
            ("model",),
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.shadow = Counter(
            "serving_proxy_shadow_comparisons",
            "Shadow comparisons of the two backends' answers, by result.",
            ("model", "result"),
            registry=registry,
        )
        self.legacy_requests = Counter(
            "serving_proxy_legacy_requests",
            "Requests that came in on the 1.x URL, by hashed client key (top N, then other).",
            ("model", "client"),
            registry=registry,
        )
        # When the endpoint is slow, cold, rate-limited or gone (README).
        self.retries = Counter(
            "serving_proxy_upstream_retries",
            "Upstream attempts sent again, by the reason (429, 503, 504 in a hold, connect).",
            ("model", "backend", "reason"),
            registry=registry,
        )
        self.retry_stops = Counter(
            "serving_proxy_retry_stops",
            "Requests whose retries stopped with attempts left, by why (budget_s, "
            "max_attempts, retry_budget, retry_after).",
            ("model", "reason"),
            registry=registry,
        )
        self.holds = Histogram(
            "serving_proxy_cold_start_hold_seconds",
            "Time requests were held while a scaled-to-zero endpoint started.",
            ("model",),
            buckets=HOLD_BUCKETS_S,
            registry=registry,
        )
        self.spills = Counter(
            "serving_proxy_spill_backs",
            "Legacy clients' requests sent to the legacy backend after the serverless side "
            "did not process them, by the reason.",
            ("model", "reason"),
            registry=registry,
        )
        self.queue_wait = Histogram(
            "serving_proxy_queue_wait_seconds",
            "Time requests waited in their model's queue (max_in_flight), admitted or not.",
            ("model", "result"),
            buckets=REQUEST_BUCKETS_S,
            registry=registry,
        )
        self.probes = Counter(
            "serving_proxy_probe_results",
            "Readiness probes of the new endpoint before a rollout step, by result.",
            ("model", "result"),
            registry=registry,
        )
        self.token_fetches = Counter(
            "serving_proxy_token_fetches",
            "Tokens fetched for a backend's `auth: databricks` (the first, each refresh ahead "
            "of expiry, each renewal after a 401), by the backend's URL and result.",
            ("backend_url", "result"),
            registry=registry,
        )
        # labels() takes a lock and validates on every call; the children never change.
        self._children: dict[tuple[str, ...], tuple[Histogram, Counter]] = {}
        self._upstream: dict[tuple[str, str], Histogram] = {}
        self._translate: dict[tuple[str, str], Histogram] = {}
        self._clients: dict[tuple[str, str], Counter] = {}
        self._shadow: dict[tuple[str, str], Counter] = {}

    def count(self, record: ExchangeRecord) -> None:
        """Count one finished request (called once per record, after the response)."""
        model = record.model or NONE
        backend = NONE if record.backend is None else str(record.backend)
        fmt = record.legacy_format or NONE
        klass = status_class(record.status)
        flag = outcome(record)
        key = (model, backend, fmt, klass, flag)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.request_duration.labels(model, backend, fmt, klass),
                self.requests.labels(model, backend, fmt, klass, flag),
            )
        duration, total = children
        duration.observe(record.total_s)
        total.inc()
        # Created on first use only: a series that can never move is noise on a dashboard.
        if record.upstream_s is not None:
            upstream = self._upstream.get((model, backend))
            if upstream is None:
                upstream = self._upstream[(model, backend)] = self.upstream_duration.labels(
                    model, backend
                )
            upstream.observe(record.upstream_s)
        if record.translate_s > 0:
            translate = self._translate.get((model, fmt))
            if translate is None:
                translate = self._translate[(model, fmt)] = self.translate_duration.labels(
                    model, fmt
                )
            translate.observe(record.translate_s)
        if record.retries or record.retry_stop or record.held_s or record.spill or record.queue:
            self._count_resilience(model, backend, record)
        if record.client_key is not None and is_legacy_client(record):
            client = self.inventory.label(model, record.client_key)
            counter = self._clients.get((model, client))
            if counter is None:
                counter = self._clients[(model, client)] = self.legacy_requests.labels(
                    model, client
                )
            counter.inc()

    def _count_resilience(self, model: str, backend: str, record: ExchangeRecord) -> None:
        # Rare on a healthy endpoint: labels() per event is fine here.
        for reason in record.retries:
            # A spilled request's retries were the serverless side's.
            where = str(Backend.SERVERLESS) if record.spill is not None else backend
            self.retries.labels(model, where, reason).inc()
        if record.retry_stop is not None:
            self.retry_stops.labels(model, record.retry_stop).inc()
        if record.held_s > 0:
            self.holds.labels(model).observe(record.held_s)
        if record.spill is not None:
            self.spills.labels(model, record.spill).inc()
        if record.queue is not None:
            self.queue_wait.labels(model, record.queue).observe(record.queued_s)

    def count_token_fetch(self, url: str, result: str) -> None:
        """One token fetch for `auth: databricks` towards `url`: `ok` or `failed`."""
        self.token_fetches.labels(url, result).inc()

    def count_probe(self, model: str, result: str) -> None:
        """One readiness probe before a rollout step: `ok` or `failed`."""
        self.probes.labels(model, result).inc()

    def follow_in_flight(self, read: Callable[[], float]) -> bool:
        """Let the in-flight gauge read `read()` at scrape time instead of being told +1/-1
        per request. Only one process can be read that way: with several workers each one
        must keep its own live value in the shared files, so this returns False and the
        caller keeps counting."""
        if self.multiprocess_dir is not None:
            return False
        self.in_flight.set_function(read)
        return True

    def count_shadow(self, model: str, result: str) -> None:
        """Count one shadow result, labelled with the verdict as it is."""
        counter = self._shadow.get((model, result))
        if counter is None:
            counter = self._shadow[(model, result)] = self.shadow.labels(model, result)
        counter.inc()

    def set_weights(self, weights: Iterable[tuple[str, float | None]]) -> None:
        """Publish each model's serverless share, given in percent (None: unknown, skipped)."""
        for model, percent in weights:
            if percent is not None:
                self.weight.labels(model).set(percent / 100.0)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition for `GET /metrics` and its content type."""
        registry = self.registry
        if self.multiprocess_dir is not None:
            # Every worker writes its own files; one fresh collector adds them up per scrape.
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST

    @staticmethod
    def mark_process_dead(multiprocess_dir: str | None) -> None:
        """Drop this worker's live gauges from the multiprocess files as it exits."""
        if multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), multiprocess_dir)  # type: ignore[no-untyped-call]
