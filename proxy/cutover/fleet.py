"""The fleet's gate window: every replica's window slots as frozen records, and their merge.
Pure: no I/O, no clock (callers pass `now`).

Each replica counts what it sees of a model in slots of `reporting.slot` (`window`) and
publishes each closed slot to the shared store as a `SlotRecord` (`shared`). A record is
keyed by model, replica, the weight's epoch and the slot, so the evidence for the current
weight is every replica's slots of that epoch: `select` keeps those in the window and
`merge` adds them up into the `WindowStats` the gates judge. Counts add; latencies are
HdrHistograms, which add exactly (every value to `SIGNIFICANT_FIGURES` figures), so the
fleet's p99 is the p99 of all the replicas' calls to within `P99_RELATIVE_ERROR`.

The epoch: the weight, and the `changed_at` of the first stored state this replica saw at
that weight. Replicas that saw the move in the same state agree on it exactly; one that
saw it late (two changes of the model between its polls) has a later `since` for the same
weight, so a reader keeps every record at its weight whose `since` is after its previous
epoch's (`Epoch.floor`): an earlier run at the same weight predates that, a later one
cannot exist yet.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hdrh.codec import HdrCookieException, HdrHistogramSettingsException, HdrLengthException
from hdrh.histogram import HdrHistogram

from proxy.cutover.rollout import WindowStats

# Latencies in microseconds, from 1 µs to one hour; longer ones clamp.
LOWEST_US = 1
HIGHEST_US = 3_600_000_000
# 3 figures: 2048 sub-buckets per power of two, so a bucket is at most 1/1024 of its value
# wide and the p99 read (the bucket's highest value) is within 0.1% of the exact one.
SIGNIFICANT_FIGURES = 3
P99_RELATIVE_ERROR = 0.001
# Shadow results by kind (`compare.Verdict` values and `dropped`); the first four are the
# compared answers the parity gate counts.
PARITY_KINDS = (
    "match",
    "shape_mismatch",
    "value_mismatch",
    "status_mismatch",
    "shadow_error",
    "dropped",
)
COMPARED_KINDS = PARITY_KINDS[:4]


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


def to_us(seconds: float) -> int:
    """A latency in whole microseconds, clamped to what a histogram holds."""
    return min(max(round(seconds * 1e6), LOWEST_US), HIGHEST_US)


def p99_s(histogram: HdrHistogram | None) -> float | None:
    """The 99th percentile in seconds; None if empty.

    What `get_value_at_percentile(99)` answers (the highest value of the bucket where the
    count reaches round(0.99 n)), found walking down from the maximum rather than up from
    zero: a p99 sits a few buckets under the top, and hdrh's walk is pure Python over
    every bucket below it (about a millisecond at 3 figures), on every gate evaluation.
    """
    if histogram is None:
        return None
    total = histogram.get_total_count()
    if total == 0:
        return None
    target = histogram.get_target_count_at_percentile(99.0)
    counts = histogram.counts
    index = histogram.get_counts_array_index(histogram.get_max_value())
    reached = total  # the count of values in buckets up to `index`
    while index > 0 and reached - counts[index] >= target:
        reached -= counts[index]
        index -= 1
    value = histogram.get_highest_equivalent_value(histogram.get_value_from_index(index))
    return float(value) / 1e6


@dataclass(frozen=True, slots=True)
class Epoch:
    """The weight in force and when this replica first saw it stored (`changed_at`);
    `floor`: the `since` of the replica's previous epoch (-inf: none seen), the reader's
    own (never published, not part of the epoch's identity)."""

    weight: float
    since: float
    floor: float = field(default=-math.inf, compare=False)

    @property
    def key(self) -> str:
        return f"{self.weight:g}@{self.since:.6f}"

    def covers(self, other: Epoch) -> bool:
        """Whether a record of epoch `other` counts as evidence for this one."""
        return other.weight == self.weight and other.since > self.floor


@dataclass(frozen=True, slots=True)
class SlotRecord:
    """One replica's counts for one model in one slot of one epoch.

    Histograms are latencies in µs; None when the slot has no such call. `parity` counts
    shadow results by kind; `mismatches` are the slot's last kept mismatches (JSON-ready,
    as the admin API shows them).
    """

    replica: str
    epoch: Epoch
    index: int
    slot_s: float
    serverless_calls: int = 0
    serverless_errors: int = 0
    serverless_latency: HdrHistogram | None = field(default=None, compare=False)
    legacy_calls: int = 0
    legacy_latency: HdrHistogram | None = field(default=None, compare=False)
    parity: tuple[tuple[str, int], ...] = ()
    mismatches: tuple[Mapping[str, Any], ...] = ()

    @property
    def start(self) -> float:
        return self.index * self.slot_s

    @property
    def end(self) -> float:
        return (self.index + 1) * self.slot_s

    @property
    def key(self) -> str:
        """Unique per replica, epoch and slot; what the store keys the record by."""
        return f"{self.replica}|{self.epoch.key}|{self.index}"

    def to_json(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "weight": self.epoch.weight,
            "since": self.epoch.since,
            "index": self.index,
            "slot_s": self.slot_s,
            "serverless": [
                self.serverless_calls,
                self.serverless_errors,
                _encode(self.serverless_latency),
            ],
            "legacy": [self.legacy_calls, _encode(self.legacy_latency)],
            "parity": dict(self.parity),
            "mismatches": list(self.mismatches),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SlotRecord:
        """Raises KeyError, TypeError or ValueError (`BadRecord`) on a record it cannot read."""
        calls, errors, latency = data["serverless"]
        legacy_calls, legacy_latency = data["legacy"]
        return cls(
            replica=str(data["replica"]),
            epoch=Epoch(float(data["weight"]), float(data["since"])),
            index=int(data["index"]),
            slot_s=float(data["slot_s"]),
            serverless_calls=int(calls),
            serverless_errors=int(errors),
            serverless_latency=_decode(latency),
            legacy_calls=int(legacy_calls),
            legacy_latency=_decode(legacy_latency),
            parity=tuple((str(k), int(n)) for k, n in data.get("parity", {}).items()),
            mismatches=tuple(data.get("mismatches", ())),
        )


def _encode(histogram: HdrHistogram | None) -> str | None:
    if histogram is None or histogram.get_total_count() == 0:
        return None
    text: str = histogram.encode().decode("ascii")
    return text


class BadRecord(ValueError):
    """A published record this process cannot read (truncated, or another format)."""


def _decode(text: str | None) -> HdrHistogram | None:
    if not text:
        return None
    histogram = new_histogram()
    try:
        histogram.decode_and_add(text.encode("ascii"))
    except (
        ValueError,
        zlib.error,
        HdrCookieException,
        HdrLengthException,
        HdrHistogramSettingsException,
    ) as exc:
        raise BadRecord(f"latency histogram: {exc}") from exc
    return histogram


@dataclass(frozen=True, slots=True)
class FleetWindow:
    """A model's gate window over the fleet: the merged `stats`, the shadow results by
    kind, the newest mismatches, and each replica's own stats (`replicas`). `shared`:
    False when the store did not answer, and the window is this replica's alone."""

    stats: WindowStats
    parity: Mapping[str, int]
    mismatches: tuple[Mapping[str, Any], ...]
    replicas: Mapping[str, WindowStats]
    shared: bool = True


def in_window(record: SlotRecord, now: float, window_s: float) -> bool:
    """Whether any of the record's slot lies in the last `window_s` (whole slots count)."""
    return record.end > now - window_s


def select(
    records: Iterable[SlotRecord], epoch: Epoch, now: float, window_s: float
) -> list[SlotRecord]:
    """The records that are evidence for `epoch` in the window ending `now`."""
    return [r for r in records if epoch.covers(r.epoch) and in_window(r, now, window_s)]


@dataclass(slots=True)
class Totals:
    """Records added up so far: counts summed, latency histograms added (a histogram is
    made on the first record that has one)."""

    serverless_calls: int = 0
    serverless_errors: int = 0
    legacy_calls: int = 0
    serverless: HdrHistogram | None = None
    legacy: HdrHistogram | None = None
    parity: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARITY_KINDS, 0))

    def add(self, record: SlotRecord) -> None:
        self.serverless_calls += record.serverless_calls
        self.serverless_errors += record.serverless_errors
        self.legacy_calls += record.legacy_calls
        if record.serverless_latency is not None:
            self.serverless = self.serverless or new_histogram()
            self.serverless.add(record.serverless_latency)
        if record.legacy_latency is not None:
            self.legacy = self.legacy or new_histogram()
            self.legacy.add(record.legacy_latency)
        for kind, n in record.parity:
            # A kind this version does not know (from a newer replica) is left out.
            if kind in self.parity:
                self.parity[kind] += n

    def copy(self) -> Totals:
        out = Totals(self.serverless_calls, self.serverless_errors, self.legacy_calls)
        out.parity = dict(self.parity)
        for name in ("serverless", "legacy"):
            histogram = getattr(self, name)
            if histogram is not None:
                copied = new_histogram()
                copied.add(histogram)
                setattr(out, name, copied)
        return out

    def stats(self) -> WindowStats:
        return WindowStats(
            serverless_calls=self.serverless_calls,
            serverless_errors=self.serverless_errors,
            serverless_p99_s=p99_s(self.serverless),
            legacy_calls=self.legacy_calls,
            legacy_p99_s=p99_s(self.legacy),
            parity_samples=sum(self.parity[k] for k in COMPARED_KINDS),
            parity_matches=self.parity["match"],
        )


def totals(records: Iterable[SlotRecord]) -> Totals:
    out = Totals()
    for record in records:
        out.add(record)
    return out


def merge(records: Iterable[SlotRecord]) -> WindowStats:
    """Add the records up: counts are summed, latency histograms added before the p99."""
    return totals(records).stats()


def newest_mismatches(records: Iterable[SlotRecord], keep: int) -> tuple[Mapping[str, Any], ...]:
    """The newest `keep` mismatches of the records, oldest first (by their `at`)."""
    if keep <= 0:
        return ()
    every = sorted(
        (m for record in records for m in record.mismatches),
        key=lambda m: float(m.get("at", 0.0)),
    )
    return tuple(every[-keep:])


def fleet_window(records: Sequence[SlotRecord], keep: int, *, shared: bool = True) -> FleetWindow:
    """The merged window and its per-replica breakdown."""
    by_replica: dict[str, list[SlotRecord]] = {}
    for record in records:
        by_replica.setdefault(record.replica, []).append(record)
    fleet = totals(records)
    return FleetWindow(
        stats=fleet.stats(),
        parity=fleet.parity,
        mismatches=newest_mismatches(records, keep),
        replicas={name: merge(mine) for name, mine in sorted(by_replica.items())},
        shared=shared,
    )
