"""The fleet window's records and their merge: pure, no store."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import jsoncodec
from proxy.cutover.fleet import (
    P99_RELATIVE_ERROR,
    Epoch,
    SlotRecord,
    fleet_window,
    merge,
    new_histogram,
    newest_mismatches,
    select,
    to_us,
)
from proxy.cutover.rollout import WindowStats
from proxy.cutover.window import Window, bucketed_us

EPOCH = Epoch(25.0, 1000.0, 900.0)


def histogram(*seconds: float):  # type: ignore[no-untyped-def]
    hist = new_histogram()
    for s in seconds:
        hist.record_value(to_us(s))
    return hist


def record(
    replica: str = "a",
    index: int = 100,
    *,
    epoch: Epoch = EPOCH,
    calls: int = 0,
    errors: int = 0,
    latencies: tuple[float, ...] = (),
    legacy: tuple[float, ...] = (),
    parity: tuple[tuple[str, int], ...] = (),
    mismatches: tuple[dict[str, object], ...] = (),
) -> SlotRecord:
    return SlotRecord(
        replica=replica,
        epoch=epoch,
        index=index,
        slot_s=10.0,
        serverless_calls=calls,
        serverless_errors=errors,
        serverless_latency=histogram(*latencies) if latencies else None,
        legacy_calls=len(legacy),
        legacy_latency=histogram(*legacy) if legacy else None,
        parity=parity,
        mismatches=mismatches,
    )


def round_trip(r: SlotRecord) -> SlotRecord:
    """As another replica reads it: JSON through the store."""
    return SlotRecord.from_json(jsoncodec.loads(jsoncodec.dumps(r.to_json())))


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param([], WindowStats(), id="nothing"),
        pytest.param(
            [record("a", calls=150, errors=3), record("b", calls=150, errors=1)],
            WindowStats(serverless_calls=300, serverless_errors=4),
            id="counts-add-across-replicas",
        ),
        pytest.param(
            [record("a", 100, calls=2), record("a", 101, calls=5, errors=5)],
            WindowStats(serverless_calls=7, serverless_errors=5),
            id="counts-add-across-slots",
        ),
        pytest.param(
            [
                record("a", parity=(("match", 90), ("value_mismatch", 5), ("shadow_error", 7))),
                record("b", parity=(("match", 3), ("shape_mismatch", 2), ("dropped", 4))),
            ],
            WindowStats(parity_samples=100, parity_matches=93),
            id="parity-counts-compared-answers-only",
        ),
        pytest.param(
            [record("a", calls=1, latencies=(0.010,)), record("b", calls=1, latencies=(0.500,))],
            WindowStats(serverless_calls=2, serverless_p99_s=0.500),
            id="p99-of-the-merged-histogram",
        ),
        pytest.param(
            [record("a", legacy=(0.020,) * 99), record("b", legacy=(0.300,))],
            WindowStats(legacy_calls=100, legacy_p99_s=0.020),
            id="legacy-p99-rank-round-0.99n",
        ),
    ],
)
def test_merge(records: list[SlotRecord], expected: WindowStats) -> None:
    for got in (merge(records), merge([round_trip(r) for r in records])):
        assert got.serverless_calls == expected.serverless_calls
        assert got.serverless_errors == expected.serverless_errors
        assert got.legacy_calls == expected.legacy_calls
        assert (got.parity_samples, got.parity_matches) == (
            expected.parity_samples,
            expected.parity_matches,
        )
        for value, want in (
            (got.serverless_p99_s, expected.serverless_p99_s),
            (got.legacy_p99_s, expected.legacy_p99_s),
        ):
            if want is None:
                assert value is None
            else:
                assert value == pytest.approx(want, rel=P99_RELATIVE_ERROR)


def exact_p99(values: list[float]) -> float:
    """HdrHistogram's rank, round(0.99 n) (at least 1), on the exact values."""
    ordered = sorted(to_us(v) for v in values)
    rank = max(1, int(0.99 * len(ordered) + 0.5))
    return ordered[rank - 1] / 1e6


latency = st.floats(min_value=1e-5, max_value=600.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(latency, min_size=0, max_size=200),  # one replica's slot each
        min_size=1,
        max_size=6,
    ),
    st.lists(st.integers(min_value=0, max_value=50), min_size=6, max_size=6),
)
def test_merging_encoded_slots_is_one_histogram_of_every_value(
    slots: list[list[float]], errors: list[int]
) -> None:
    records = [
        round_trip(
            record(
                f"r{i}",
                calls=len(values) + errors[i],
                errors=errors[i],
                latencies=tuple(values),
            )
        )
        for i, values in enumerate(slots)
    ]
    got = merge(records)
    every = [v for values in slots for v in values]
    assert got.serverless_calls == len(every) + sum(errors[: len(slots)])
    assert got.serverless_errors == sum(errors[: len(slots)])
    if not every:
        assert got.serverless_p99_s is None
        return
    assert got.serverless_p99_s is not None
    want = exact_p99(every)
    assert math.isclose(got.serverless_p99_s, want, rel_tol=P99_RELATIVE_ERROR)
    # And the same as one histogram fed every value directly.
    single = histogram(*every).get_value_at_percentile(99.0) / 1e6
    assert got.serverless_p99_s == single


def test_select_keeps_the_epoch_and_the_window() -> None:
    now = 1100.0
    keep = [
        record("a", 105),  # same epoch
        record("b", 104, epoch=Epoch(25.0, 1003.0)),  # saw the move late: still this weight
        record("c", 104, epoch=Epoch(25.0, 950.0)),  # after the previous epoch began
    ]
    drop = [
        record("a", 106, epoch=Epoch(5.0, 1000.0)),  # another weight
        record("b", 103, epoch=Epoch(25.0, 800.0)),  # this weight, but before the last move
        record("c", 103, epoch=Epoch(25.0, 900.0)),  # the previous epoch's own start
        record("a", 103),  # ended 1040: out of a 60 s window
    ]
    assert select([*keep, *drop], EPOCH, now, 60.0) == keep


def test_a_fresh_replica_counts_every_record_at_its_weight() -> None:
    fresh = Epoch(25.0, 1050.0)  # no previous epoch: floor -inf
    older = record("b", 104, epoch=Epoch(25.0, 1000.0))
    assert select([older], fresh, 1100.0, 60.0) == [older]


def test_mismatches_merge_by_time_and_keep_the_newest() -> None:
    a = record("a", mismatches=tuple({"at": t, "request_id": f"a{t}"} for t in (1, 4, 6)))
    b = record("b", mismatches=tuple({"at": t, "request_id": f"b{t}"} for t in (2, 3, 5, 7)))
    assert [m["request_id"] for m in newest_mismatches([a, b], 3)] == ["b5", "a6", "b7"]
    assert newest_mismatches([a, b], 0) == ()


def test_fleet_window_breaks_down_by_replica() -> None:
    records = [
        record("a", 100, calls=100, errors=1),
        record("a", 101, calls=50),
        record("b", 100, calls=150, errors=2, parity=(("match", 9), ("status_mismatch", 1))),
    ]
    fleet = fleet_window(records, keep=10)
    assert (fleet.stats.serverless_calls, fleet.stats.serverless_errors) == (300, 3)
    assert set(fleet.replicas) == {"a", "b"}
    assert fleet.replicas["a"].serverless_calls == 150
    assert fleet.replicas["b"].serverless_errors == 2
    assert fleet.parity["match"] == 9
    assert fleet.parity["status_mismatch"] == 1
    assert fleet.shared


def test_a_record_survives_json() -> None:
    r = record(
        "pod-7",
        calls=3,
        errors=1,
        latencies=(0.1, 0.2),
        legacy=(0.05,),
        parity=(("match", 2),),
        mismatches=({"at": 1.0, "request_id": "x"},),
    )
    back = round_trip(r)
    assert back == r  # histograms aside (not compared)
    assert back.key == "pod-7|25@1000.000000|100"
    assert back.serverless_latency is not None
    assert back.serverless_latency.get_total_count() == 2


@settings(max_examples=200, deadline=None)
@given(latency)
def test_a_latency_waits_in_the_bucket_the_histogram_would_put_it_in(seconds: float) -> None:
    hist = new_histogram()
    value = to_us(seconds)
    assert bucketed_us(seconds) == hist.get_lowest_equivalent_value(value)


def test_a_parity_kind_this_version_does_not_know_is_left_out() -> None:
    newer = record("b", parity=(("match", 2), ("semantic_mismatch", 3)))
    fleet = fleet_window([newer], keep=1)
    assert "semantic_mismatch" not in fleet.parity
    assert (fleet.stats.parity_samples, fleet.stats.parity_matches) == (2, 2)


@pytest.mark.parametrize("histogram_text", ["xx", "SGVsbG8=", "HISTFAAAAB"])
def test_an_unreadable_histogram_is_a_value_error(histogram_text: str) -> None:
    data = record("b", calls=1, latencies=(0.1,)).to_json()
    data["serverless"][2] = histogram_text
    with pytest.raises(ValueError, match="latency histogram"):
        SlotRecord.from_json(data)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=5000.0, allow_nan=False), min_size=1))
def test_a_window_slot_holds_the_histogram_of_its_calls(seconds: list[float]) -> None:
    window = Window(10.0, 0, EPOCH)
    for s in seconds:
        window.count_call(1005.0, True, 200, s)
        window.count_call(1005.0, False, 200, s)
    (slot,) = window.records("a", 1005.0, 60.0)
    want = histogram(*seconds)
    for got in (slot.serverless_latency, slot.legacy_latency):
        assert got is not None
        assert got.get_total_count() == len(seconds)
        for p in (50.0, 99.0, 100.0):
            assert got.get_value_at_percentile(p) == want.get_value_at_percentile(p)
