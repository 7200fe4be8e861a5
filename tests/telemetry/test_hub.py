"""The hub: one finished record reaches the inventory, the statistics and the metrics; the
statistics travel between workers through the shared directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from proxy.compare import parity_class
from proxy.models import Backend
from proxy.telemetry.hub import Hub
from proxy.telemetry.inventory import ClientInventory
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.record import ExchangeRecord
from proxy.telemetry.stats import Rollout, Stats, StatsSettings

T0 = 1_800_000_000.0


def hub(shared_dir: Path | None = None, *, metrics: bool = True) -> Hub:
    inventory = ClientInventory(top_n=2)
    stats = Stats(StatsSettings(window_s=60, slot_s=10), inventory=inventory)
    registry = CollectorRegistry()
    return Hub(
        inventory,
        stats,
        Metrics(registry, inventory=inventory) if metrics else None,
        ("iris",),
        lambda model: Rollout(),
        clock=lambda: T0,
        shared_dir=shared_dir,
    )


def record(path: str = "/model/iris/1/invocations", fmt: str | None = None) -> ExchangeRecord:
    r = ExchangeRecord(request_id="r", method="POST", path=path, started=0.0)
    r.model, r.backend, r.status, r.client_key = "iris", Backend.LEGACY, 200, "app-a"
    r.legacy_format, r.total_s, r.upstream_s = fmt, 0.010, 0.008
    return r


@pytest.mark.parametrize(
    ("verdict", "result"),
    [
        pytest.param("match", "match", id="match"),
        pytest.param("dropped", "dropped", id="dropped"),
        pytest.param("shape_mismatch", "mismatch", id="shape"),
        pytest.param("value_mismatch", "mismatch", id="value"),
        pytest.param("shadow_error", "error", id="error"),
    ],
)
def test_parity_class_folds_verdicts(verdict: str, result: str) -> None:
    assert parity_class(verdict) == result


def test_finish_counts_a_legacy_client_once_everywhere() -> None:
    h = hub()
    h.finish(record())
    h.finish(record(path="/serving-endpoints/iris/invocations", fmt="csv"))  # migrated
    assert h.stats is not None
    assert h.metrics is not None
    view = h.stats.snapshot(T0)["models"]["iris"]
    assert view["requests"] == 2
    # No detected format: the body went to the legacy side untouched.
    assert view["clients"] == [
        {
            "client": "app-a",
            "identity": None,
            "requests": 1,
            "last_seen": T0,
            "formats": {"passthrough": 1},
        }
    ]
    sample = h.metrics.registry.get_sample_value(
        "serving_proxy_legacy_requests_total", {"model": "iris", "client": "app-a"}
    )
    assert sample == 1.0


def test_shadow_results_reach_stats_folded_and_metrics_as_they_are() -> None:
    h = hub()
    h.shadow_result("iris", "value_mismatch")
    assert h.stats is not None
    assert h.metrics is not None
    assert h.stats.snapshot(T0)["models"]["iris"]["parity"]["mismatch"] == 1
    sample = h.metrics.registry.get_sample_value(
        "serving_proxy_shadow_comparisons_total", {"model": "iris", "result": "value_mismatch"}
    )
    assert sample == 1.0


def test_probe_results_reach_the_report_and_the_metrics() -> None:
    h = hub()
    h.probe_result("iris", ok=False)
    h.probe_result("iris", ok=True)
    assert h.stats is not None
    assert h.metrics is not None
    events = h.stats.snapshot(T0)["models"]["iris"]["events"]
    assert (events["probes_ok"], events["probes_failed"]) == (1, 1)
    for result in ("ok", "failed"):
        sample = h.metrics.registry.get_sample_value(
            "serving_proxy_probe_results_total", {"model": "iris", "result": result}
        )
        assert sample == 1.0


def test_workers_read_each_others_published_statistics(tmp_path: Path) -> None:
    first, second = hub(tmp_path, metrics=False), hub(tmp_path, metrics=False)
    first.finish(record())  # no event loop: published at once
    # Both run in this process: the peer's file is told apart by its name only.
    first.stats_file.rename(tmp_path / "stats_1.json")
    second.finish(record())
    assert second.stats_file.exists()
    report = second.report()
    assert report["workers"] == 2
    assert report["models"]["iris"]["requests"] == 2
    second.close()  # its figures leave with it
    assert not second.stats_file.exists()
    second.publish()  # a timer firing after shutdown must not bring the file back
    assert not second.stats_file.exists()
