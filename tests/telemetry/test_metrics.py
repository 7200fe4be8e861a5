"""Prometheus collectors on a fresh registry per test (architecture §1.5 "metrics")."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from proxy.models import Backend
from proxy.telemetry.inventory import OTHER, ClientInventory
from proxy.telemetry.metrics import REQUEST_BUCKETS_S, Metrics, multiprocess_enabled, status_class
from proxy.telemetry.record import ExchangeRecord


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def record(
    *,
    model: str | None = "iris",
    backend: Backend | None = Backend.SERVERLESS,
    legacy_format: str | None = "pandas-split",
    status: int = 200,
    flag: str = "-",
    total_s: float = 0.004,
    upstream_s: float | None = 0.003,
    translate_s: float = 0.0002,
    client_key: str | None = "k1",
    path: str = "/model/iris/1/invocations",
) -> ExchangeRecord:
    r = ExchangeRecord(request_id="r", method="POST", path=path, started=0.0)
    r.model, r.backend, r.legacy_format = model, backend, legacy_format
    r.status, r.flag, r.client_key = status, flag, client_key
    r.total_s, r.upstream_s, r.translate_s = total_s, upstream_s, translate_s
    return r


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_counts_and_sums_are_what_was_observed(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry)
    totals = [0.004, 0.006, 0.010]
    for total in totals:
        metrics.count(record(total_s=total, upstream_s=total / 2))
    metrics.count(record(backend=Backend.LEGACY, legacy_format=None, translate_s=0.0))
    labels = {
        "model": "iris",
        "backend": "serverless",
        "legacy_format": "pandas-split",
        "status_class": "2xx",
    }
    name = "serving_proxy_request_duration_seconds"
    assert value(registry, f"{name}_count", **labels) == 3
    assert value(registry, f"{name}_sum", **labels) == pytest.approx(sum(totals))
    assert value(registry, "serving_proxy_requests_total", **labels, outcome="OK") == 3
    up = "serving_proxy_upstream_duration_seconds"
    assert value(registry, f"{up}_count", model="iris", backend="serverless") == 3
    assert value(registry, f"{up}_sum", model="iris", backend="serverless") == pytest.approx(
        sum(totals) / 2
    )
    assert value(registry, f"{up}_count", model="iris", backend="legacy") == 1
    tr = "serving_proxy_translate_duration_seconds"
    assert value(registry, f"{tr}_count", model="iris", legacy_format="pandas-split") == 3
    # A pass-through legacy request is not translated: no translate sample for it.
    assert value(registry, f"{tr}_count", model="iris", legacy_format="none") is None


def test_buckets_tell_one_millisecond_from_two(registry: CollectorRegistry) -> None:
    assert 0.001 in REQUEST_BUCKETS_S
    assert 0.002 in REQUEST_BUCKETS_S
    metrics = Metrics(registry)
    metrics.count(record(total_s=0.0009))
    metrics.count(record(total_s=0.0018))
    labels = {
        "model": "iris",
        "backend": "serverless",
        "legacy_format": "pandas-split",
        "status_class": "2xx",
    }
    name = "serving_proxy_request_duration_seconds_bucket"
    assert value(registry, name, **labels, le="0.001") == 1
    assert value(registry, name, **labels, le="0.002") == 2


@pytest.mark.parametrize(
    ("kwargs", "klass", "outcome"),
    [
        pytest.param({}, "2xx", "OK", id="ok"),
        pytest.param({"status": 400}, "4xx", "UE", id="upstream-4xx"),
        pytest.param({"status": 503}, "5xx", "UE", id="upstream-5xx"),
        pytest.param({"status": 504, "flag": "UT"}, "5xx", "UT", id="timeout"),
        pytest.param({"status": 413, "flag": "PTL", "backend": None}, "4xx", "PTL", id="413"),
        pytest.param({"status": 401, "backend": None}, "4xx", "LE", id="admin-401"),
        pytest.param({"status": 0, "backend": None}, "none", "NS", id="no-response"),
        pytest.param(
            {"status": 404, "flag": "NRT", "model": None, "backend": None}, "4xx", "NRT", id="404"
        ),
    ],
)
def test_every_outcome_is_counted(
    registry: CollectorRegistry, kwargs: dict[str, object], klass: str, outcome: str
) -> None:
    r = record(**kwargs)  # type: ignore[arg-type]
    Metrics(registry).count(r)
    labels = {
        "model": r.model or "none",
        "backend": "none" if r.backend is None else str(r.backend),
        "legacy_format": "pandas-split",
        "status_class": klass,
        "outcome": outcome,
    }
    assert value(registry, "serving_proxy_requests_total", **labels) == 1


def test_status_class() -> None:
    assert [status_class(s) for s in (0, 200, 302, 404, 599)] == [
        "none",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
    ]


def test_legacy_clients_are_bounded_to_top_n_and_other(registry: CollectorRegistry) -> None:
    inventory = ClientInventory(top_n=2)
    metrics = Metrics(registry, inventory=inventory)
    sent = {"a": 5, "b": 3, "c": 1}
    for key, count in sent.items():
        for _ in range(count):
            inventory.saw("iris", key, "pandas-split", 0.0)
    inventory.refresh_top()
    for key, count in sent.items():
        for _ in range(count):
            metrics.count(record(client_key=key))
    # A migrated client on the new URL is not legacy use.
    metrics.count(record(client_key="a", path="/serving-endpoints/iris/invocations"))
    name = "serving_proxy_legacy_requests_total"
    assert value(registry, name, model="iris", client="a") == 5
    assert value(registry, name, model="iris", client="b") == 3
    assert value(registry, name, model="iris", client=OTHER) == 1
    assert value(registry, name, model="iris", client="c") is None


def test_weights_shadow_and_in_flight(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry)
    metrics.set_weights([("iris", 25.0), ("wine", None)])
    metrics.count_shadow("iris", "match")
    metrics.count_shadow("iris", "match")
    metrics.count_shadow("iris", "mismatch")
    metrics.in_flight.inc()
    assert value(registry, "serving_proxy_cutover_weight_ratio", model="iris") == 0.25
    assert value(registry, "serving_proxy_cutover_weight_ratio", model="wine") is None
    name = "serving_proxy_shadow_comparisons_total"
    assert value(registry, name, model="iris", result="match") == 2
    assert value(registry, name, model="iris", result="mismatch") == 1
    assert value(registry, "serving_proxy_requests_in_flight") == 1


def test_exposition_is_the_private_registry(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry)
    metrics.count(record())
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    text = body.decode()
    for name in (
        "serving_proxy_request_duration_seconds_bucket",
        "serving_proxy_upstream_duration_seconds_count",
        "serving_proxy_translate_duration_seconds_sum",
        "serving_proxy_requests_total",
        "serving_proxy_requests_in_flight",
        "serving_proxy_legacy_requests_total",
    ):
        assert name in text
    # Nothing from the process-wide default registry leaks in.
    assert "python_gc_objects_collected_total" not in text


def test_two_apps_never_share_collectors() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    Metrics(first).count(record())
    Metrics(second)
    labels = {
        "model": "iris",
        "backend": "serverless",
        "legacy_format": "pandas-split",
        "status_class": "2xx",
        "outcome": "OK",
    }
    assert value(first, "serving_proxy_requests_total", **labels) == 1
    assert value(second, "serving_proxy_requests_total", **labels) is None


@pytest.mark.skipif(multiprocess_enabled(), reason="this process runs in multiprocess mode")
def test_multiprocess_needs_the_env_before_import(registry: CollectorRegistry, tmp_path) -> None:
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics(registry, multiprocess_dir=str(tmp_path))


def test_retries_holds_spills_queue_and_probes_are_counted(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry)
    metrics.count(record())  # a healthy request creates none of these series
    assert value(registry, "serving_proxy_spill_backs_total", model="iris", reason="429") is None
    spilled = record(backend=Backend.LEGACY)
    spilled.retries, spilled.retry_stop, spilled.spill = ("429", "429"), "budget_s", "429"
    metrics.count(spilled)
    held = record()
    held.retries, held.held_s, held.queue, held.queued_s = ("connect",), 3.0, "waited", 0.2
    metrics.count(held)
    rejected = record(status=503, flag="UO")
    rejected.queue, rejected.queued_s = "timeout", 0.5
    metrics.count(rejected)
    metrics.count_probe("iris", "failed")
    retries = "serving_proxy_upstream_retries_total"
    assert value(registry, retries, model="iris", backend="serverless", reason="429") == 2
    assert value(registry, retries, model="iris", backend="serverless", reason="connect") == 1
    assert value(registry, "serving_proxy_retry_stops_total", model="iris", reason="budget_s") == 1
    assert value(registry, "serving_proxy_spill_backs_total", model="iris", reason="429") == 1
    hold = "serving_proxy_cold_start_hold_seconds"
    assert value(registry, f"{hold}_sum", model="iris") == 3.0
    queue = "serving_proxy_queue_wait_seconds"
    assert value(registry, f"{queue}_count", model="iris", result="waited") == 1
    assert value(registry, f"{queue}_sum", model="iris", result="timeout") == 0.5
    assert value(registry, "serving_proxy_probe_results_total", model="iris", result="failed") == 1
