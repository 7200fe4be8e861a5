"""HDR statistics: percentiles against raw values, the sliding window, merging workers."""

from __future__ import annotations

import random

import pytest
from hdrh.histogram import HdrHistogram

from proxy import jsoncodec
from proxy.models import Backend
from proxy.telemetry.record import ExchangeRecord
from proxy.telemetry.stats import Rollout, Stats, StatsSettings
from proxy.telemetry.views import HISTOGRAM_EDGES_MS

T0 = 1_800_000_000.0  # an epoch second on a slot boundary for slot sizes 1, 5, 10


def record(
    *,
    model: str | None = "iris",
    backend: Backend | None = Backend.SERVERLESS,
    total_s: float = 0.010,
    upstream_s: float | None = 0.008,
    status: int = 200,
    path: str = "/model/iris/1/invocations",
) -> ExchangeRecord:
    r = ExchangeRecord(request_id="r", method="POST", path=path, started=0.0)
    r.model, r.backend, r.status = model, backend, status
    r.total_s, r.upstream_s = total_s, upstream_s if backend is not None else None
    return r


def nearest_rank(values: list[float], p: float) -> float:
    """The percentile HDR estimates: the value at rank round(p·n/100), at least 1."""
    ordered = sorted(values)
    rank = max(int(p * len(ordered) / 100 + 0.5), 1)
    return ordered[rank - 1]


@pytest.mark.parametrize("figures", [2, 3])
def test_percentiles_match_raw_values_within_hdr_precision(figures: int) -> None:
    rng = random.Random(7)
    latencies = {
        Backend.LEGACY: [rng.lognormvariate(-4.0, 0.5) for _ in range(3000)],
        Backend.SERVERLESS: [rng.lognormvariate(-3.5, 0.8) for _ in range(3000)],
    }
    stats = Stats(StatsSettings(significant_figures=figures))
    for backend, values in latencies.items():
        for i, v in enumerate(values):
            stats.add(record(backend=backend, total_s=v, upstream_s=v / 2), T0 + i * 0.01)
    view = stats.snapshot(T0 + 60)["models"]["iris"]
    tolerance = 10.0 ** (1 - figures)  # 2 figures: 1 %, 3 figures: 0.1 %
    for backend, values in latencies.items():
        got = view["backends"][str(backend)]
        assert got["requests"] == len(values)
        for p in (50, 95, 99):
            raw_ms = nearest_rank(values, p) * 1e3
            # HDR reports the top of the value's bucket: never below, at most `tolerance` above.
            assert raw_ms - 1e-3 <= got[f"p{p}"] <= raw_ms * (1 + tolerance) + 1e-3
    for p in (50, 95, 99):
        legacy, serverless = view["backends"]["legacy"], view["backends"]["serverless"]
        assert view["ratio"][f"p{p}"] == pytest.approx(serverless[f"p{p}"] / legacy[f"p{p}"])
    proxy_raw = [v / 2 for vs in latencies.values() for v in vs]
    assert view["proxy"]["p50"] == pytest.approx(nearest_rank(proxy_raw, 50) * 1e3, rel=0.01)


def test_window_forgets_old_slots_but_history_keeps_their_summary() -> None:
    stats = Stats(StatsSettings(window_s=30, slot_s=10))
    stats.add(record(total_s=0.5), T0)
    stats.add(record(total_s=0.001), T0 + 25)
    view = stats.snapshot(T0 + 25)["models"]["iris"]["backends"]["serverless"]
    assert view["requests"] == 2
    later = stats.snapshot(T0 + 35)
    view = later["models"]["iris"]["backends"]["serverless"]
    assert view["requests"] == 1
    assert view["p99"] == pytest.approx(1.0, rel=0.01)
    stats.add(record(total_s=0.002), T0 + 45)
    series = stats.snapshot(T0 + 45)["series"]
    assert [point["t"] for point in series] == [T0, T0 + 20, T0 + 40]
    assert series[0]["models"]["iris"]["serverless"]["requests"] == 1
    assert series[0]["models"]["iris"]["serverless"]["p50"] == pytest.approx(500, rel=0.01)
    assert series[0]["models"]["iris"]["proxy"]["requests"] == 1


def test_errors_local_replies_and_unknown_models() -> None:
    stats = Stats()
    stats.add(record(status=200), T0)
    stats.add(record(status=503), T0)
    stats.add(record(backend=None, status=400), T0)  # bad input: a local reply
    stats.add(record(backend=None, status=500), T0)
    stats.add(record(model=None, backend=None, status=404), T0)  # not a model: not counted
    view = stats.snapshot(T0 + 1)["models"]
    assert list(view) == ["iris"]
    iris = view["iris"]
    assert (iris["requests"], iris["errors"], iris["local_replies"]) == (4, 2, 2)
    assert iris["error_rate"] == 0.5
    assert iris["backends"]["serverless"]["error_rate"] == 0.5
    assert iris["backends"]["legacy"] == {
        "requests": 0,
        "errors": 0,
        "error_rate": None,
        "p50": None,
        "p95": None,
        "p99": None,
    }
    assert iris["ratio"] == {"p50": None, "p95": None, "p99": None}


def test_distribution_counts_every_request_once() -> None:
    stats = Stats()
    for ms in (0.1, 0.3, 1.5, 1.5, 3000, 10_000):
        stats.add(record(total_s=ms / 1e3), T0)
    dist = stats.snapshot(T0)["models"]["iris"]["histogram"]["serverless"]
    assert dist["edges_ms"] == list(HISTOGRAM_EDGES_MS)
    assert sum(dist["counts"]) == 6
    assert dist["counts"][0] == 1  # ≤ 0.25 ms
    assert dist["counts"][1] == 1  # ≤ 0.354 ms
    assert dist["counts"][HISTOGRAM_EDGES_MS.index(2.0)] == 2
    assert dist["counts"][-1] == 1  # over the last edge
    assert stats.snapshot(T0)["models"]["iris"]["histogram"]["legacy"] is None


def test_rollout_points_mark_rollbacks() -> None:
    weights = {"iris": Rollout(10.0, "running")}
    stats = Stats(StatsSettings(slot_s=10, window_s=60), rollout=lambda m: weights[m])
    stats.add(record(), T0)
    weights["iris"] = Rollout(50.0, "running")
    stats.add(record(), T0 + 10)  # a new slot samples the source
    weights["iris"] = Rollout(0.0, "rolled_back")
    stats.note_rollout("iris", T0 + 12)
    stats.add(record(), T0 + 20)  # unchanged: no new point
    view = stats.snapshot(T0 + 21)["models"]["iris"]
    assert [(p["weight"], p["event"]) for p in view["weights"]] == [
        (10.0, None),
        (50.0, None),
        (0.0, "rollback"),
    ]
    assert (view["weight"], view["state"]) == (0.0, "rolled_back")


def test_parity_window_and_totals() -> None:
    stats = Stats(StatsSettings(window_s=10, slot_s=10))
    for result in ("match", "match", "match", "mismatch", "error"):
        stats.add_parity("iris", result, T0)
    parity = stats.snapshot(T0)["models"]["iris"]["parity"]
    assert (parity["match"], parity["mismatch"], parity["error"]) == (3, 1, 1)
    assert parity["rate"] == 0.75
    stats.add_parity("iris", "dropped", T0 + 15)
    parity = stats.snapshot(T0 + 15)["models"]["iris"]["parity"]
    assert (parity["match"], parity["dropped"], parity["rate"]) == (0, 1, None)
    assert parity["total"] == {"match": 3, "mismatch": 1, "error": 1, "dropped": 1}


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"slot_s": 0}, id="zero-slot"),
        pytest.param({"window_s": 5, "slot_s": 10}, id="slot-longer-than-window"),
        pytest.param({"significant_figures": 6}, id="figures"),
        pytest.param({"client_top_n": 0}, id="top-n"),
        pytest.param({"history_points": 0}, id="history"),
    ],
)
def test_settings_refuse_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        StatsSettings(**kwargs)  # type: ignore[arg-type]


def test_clock_stepping_back_keeps_counting() -> None:
    stats = Stats(StatsSettings(window_s=60, slot_s=10))
    stats.add(record(), T0 + 20)
    stats.add(record(), T0 + 5)
    assert stats.snapshot(T0 + 20)["models"]["iris"]["requests"] == 2


def test_workers_merge_to_the_figures_of_one_process() -> None:
    """Two workers' statistics, one merged through `export`, equal one process's."""
    rng = random.Random(3)
    settings = StatsSettings(window_s=60, slot_s=10, client_top_n=3)
    one, first, second = Stats(settings), Stats(settings), Stats(settings)
    for i in range(400):
        backend = Backend.LEGACY if i % 3 else Backend.SERVERLESS
        r = record(
            backend=backend, total_s=rng.lognormvariate(-4, 0.6), status=503 if i % 50 == 0 else 200
        )
        t = T0 + i * 0.1
        worker = first if i % 2 else second
        for stats in (one, worker):
            stats.add(r, t)
            stats.inventory.saw("iris", f"k{i % 5}", "csv", t)
            stats.add_parity("iris", "match" if i % 7 else "mismatch", t)
        if i % 10 == 0:
            eventful = record(backend=None if i % 20 else Backend.LEGACY, status=503)
            eventful.retries, eventful.spill, eventful.queue = ("429",) * (i % 3), "429", "timeout"
            for stats in (one, worker):
                stats.add(eventful, t)
    now = T0 + 40
    exported = jsoncodec.loads(jsoncodec.dumps(second.export(now)))  # as read from its file
    merged = first.snapshot(now, [exported])
    alone = one.snapshot(now)
    # Weights are each process's own samples of the shared cutover store: not merged.
    for view in (merged["models"]["iris"], alone["models"]["iris"]):
        view.pop("weights")
    assert merged["models"] == alone["models"]
    assert [p["models"] for p in merged["series"]] == [p["models"] for p in alone["series"]]


def test_export_skips_what_left_the_window_and_other_slot_sizes() -> None:
    stats = Stats(StatsSettings(window_s=20, slot_s=10))
    other = Stats(StatsSettings(window_s=20, slot_s=10))
    other.add(record(), T0)
    old = other.export(T0)
    assert stats.snapshot(T0 + 100, [old])["models"]["iris"]["requests"] == 0
    assert stats.snapshot(T0, [{**old, "slot_s": 5.0}])["models"]["iris"]["requests"] == 0
    assert stats.snapshot(T0, [old])["models"]["iris"]["requests"] == 1


@pytest.mark.parametrize("figures", [1, 2, 3, 4])
def test_pending_values_land_in_the_buckets_hdr_would_choose(figures: int) -> None:
    """Values wait in a dict keyed by their bucket's lowest value; the histogram read later
    equals one that recorded every raw value."""
    rng = random.Random(figures)
    stats = Stats(StatsSettings(significant_figures=figures))
    reference = HdrHistogram(1, 3_600_000_000, figures)
    for _ in range(5000):
        seconds = rng.lognormvariate(-6, 2.5)
        stats.add(record(total_s=seconds, upstream_s=0.0), T0)
        reference.record_value(min(max(round(seconds * 1e6), 1), 3_600_000_000))
    [cell] = [c for (m, series), c in stats._slots[-1].cells.items() if series == "serverless"]
    hist = cell.histogram()
    assert hist.get_total_count() == reference.get_total_count()
    assert list(hist.counts) == list(reference.counts)


def test_retries_holds_spills_and_the_queue_are_counted_in_the_window() -> None:
    stats = Stats(StatsSettings(window_s=20, slot_s=10))
    retried = record()
    retried.retries, retried.retry_stop, retried.held_s = ("429", "503"), "budget_s", 2.0
    spilled = record(backend=Backend.LEGACY)
    spilled.retries, spilled.spill, spilled.queue, spilled.queued_s = ("429",), "429", "waited", 0.1
    rejected = record(backend=None, status=503)  # answered by the proxy: no backend
    rejected.queue, rejected.queued_s = "full", 0.0
    for r in (retried, spilled, rejected, record()):
        stats.add(r, T0)
    stats.add_event("iris", "probes_failed", T0)  # a readiness probe: no request's
    assert stats.snapshot(T0 + 1)["models"]["iris"]["events"] == {
        "retries": 3,
        "retry_stops": 1,
        "holds": 1,
        "spill_backs": 1,
        "queued": 1,
        "queue_rejected": 1,
        "probes_ok": 0,
        "probes_failed": 1,
    }
    later = stats.snapshot(T0 + 40)["models"]["iris"]["events"]  # out of the window
    assert set(later.values()) == {0}
