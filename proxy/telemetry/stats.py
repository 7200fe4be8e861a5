"""In-process latency and migration statistics: HDR histograms over a sliding window.

Holds, per model and backend, what the migration report and the dashboard show: request
and error counts, end-to-end latency, the proxy's own share, the cutover weight over time
and shadow parity; the legacy client inventory it reports is `inventory`'s. Memory only:
no I/O, no logging; the caller passes the clock so tests are deterministic.

Percentiles come from `hdrh` histograms (HdrHistogram), not from Prometheus buckets: an
HDR histogram keeps every value to a fixed number of significant figures, so p99 is read,
not interpolated. The window is a ring of fixed slots (`slots`); a slot's histograms are
dropped once it leaves the window, and its summary (a few numbers) stays for the time
series. The JSON shapes are `views`'.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram

from proxy.telemetry.inventory import DEFAULT_CLIENT_TOP_N, ClientInventory
from proxy.telemetry.record import ExchangeRecord
from proxy.telemetry.slots import (
    PROXY,
    Cell,
    Slot,
    combined,
    model_totals,
    new_histogram,
    slot_from_json,
    slot_to_json,
    to_us,
)
from proxy.telemetry.views import model_view, slot_summary

DEFAULT_WINDOW_S = 300.0
DEFAULT_SLOT_S = 10.0
DEFAULT_HISTORY_POINTS = 360
# 2 figures: every value within 1% (sub-buckets of 1/128); 3 figures would cost several
# times the memory per histogram, times models × backends × slots.
DEFAULT_SIGNIFICANT_FIGURES = 2


@dataclass(frozen=True, slots=True)
class StatsSettings:
    """How much the statistics remember.

    Attributes:
        window_s: percentiles and counts cover the last `window_s` seconds.
        slot_s: the window moves in steps of this size; also the time-series resolution.
        history_points: how many slot summaries the time series keeps.
        significant_figures: HDR precision (1–5).
        client_top_n: how many legacy client keys per model are named; the rest is `other`.
    """

    window_s: float = DEFAULT_WINDOW_S
    slot_s: float = DEFAULT_SLOT_S
    history_points: int = DEFAULT_HISTORY_POINTS
    significant_figures: int = DEFAULT_SIGNIFICANT_FIGURES
    client_top_n: int = DEFAULT_CLIENT_TOP_N

    def __post_init__(self) -> None:
        if not (self.slot_s > 0 and self.window_s >= self.slot_s):
            raise ValueError("slot_s must be > 0 and window_s >= slot_s")
        if not 1 <= self.significant_figures <= 5:
            raise ValueError("significant_figures must be between 1 and 5")
        if self.history_points < 1 or self.client_top_n < 1:
            raise ValueError("history_points and client_top_n must be >= 1")

    @property
    def slots(self) -> int:
        return max(1, math.ceil(self.window_s / self.slot_s))


@dataclass(frozen=True, slots=True)
class Rollout:
    """What the cutover store says about one model now (or the config, without a store).

    `weight` is the percent of requests sent to serverless; None where nothing says.
    """

    weight: float | None = None
    state: str | None = None


RolloutSource = Callable[[str], Rollout]


def _no_rollout(model: str) -> Rollout:
    return Rollout()


def _count_events(events: dict[tuple[str, str], int], model: str, record: ExchangeRecord) -> None:
    """Add one request's retries, hold, spill-back and queue outcome (`slots.EVENTS`)."""
    counted = (
        ("retries", len(record.retries)),
        ("retry_stops", record.retry_stop is not None),
        ("holds", record.held_s > 0),
        ("spill_backs", record.spill is not None),
        ("queued", record.queue == "waited"),
        ("queue_rejected", record.queue in ("full", "timeout")),
    )
    for event, n in counted:
        if n:
            events[(model, event)] = events.get((model, event), 0) + int(n)


@dataclass(slots=True)
class _WeightPoint:
    t: float
    weight: float | None
    state: str | None
    event: str | None = None


class Stats:
    """The sliding-window statistics of one process.

    Args:
        settings: window, slot size, precision, inventory size.
        inventory: the legacy client inventory (shared with the metrics, which label by it).
        rollout: where the current weight and rollout state of a model are read.
    """

    def __init__(
        self,
        settings: StatsSettings | None = None,
        *,
        inventory: ClientInventory | None = None,
        rollout: RolloutSource = _no_rollout,
    ) -> None:
        self.settings = settings or StatsSettings()
        self.inventory = inventory or ClientInventory(self.settings.client_top_n)
        self.rollout = rollout
        self._slots: deque[Slot] = deque()
        self._history: deque[dict[str, Any]] = deque(maxlen=self.settings.history_points)
        self._weights: dict[str, deque[_WeightPoint]] = {}
        self._parity_total: dict[tuple[str, str], int] = {}
        self._models: set[str] = set()
        # An HDR histogram keeps this many top bits of a value (its sub-bucket resolution).
        self._bucket_bits = self._histogram().sub_bucket_half_count_magnitude + 1
        # Encoded histograms of closed slots (they never change), for `export`.
        self._encoded: dict[tuple[int, str, str], str] = {}

    # --- recording ---------------------------------------------------------------------

    def _slot(self, now: float) -> Slot:
        index = int(now // self.settings.slot_s)
        if self._slots and self._slots[-1].index == index:
            return self._slots[-1]
        if self._slots and self._slots[-1].index > index:
            # A clock step backwards: keep counting in the newest slot.
            return self._slots[-1]
        self._rotate(index)
        slot = Slot(index)
        self._slots.append(slot)
        return slot

    def _rotate(self, index: int) -> None:
        """Close the open slot: summarise it into the history, drop slots out of the window."""
        if self._slots:
            self._history.append(slot_summary(self._slots[-1], self.settings.slot_s))
        oldest = index - self.settings.slots + 1
        while self._slots and self._slots[0].index < oldest:
            self._slots.popleft()
        self._encoded = {k: v for k, v in self._encoded.items() if k[0] >= oldest}
        self.inventory.refresh_top()
        for model in self._models:
            self._sample_rollout(model, index * self.settings.slot_s)

    def add(self, record: ExchangeRecord, now: float) -> None:
        """Count one finished request (called once per record, after the response)."""
        model = record.model
        if model is None:
            return  # no configured model: nothing to report per model (404 on an unknown name)
        if model not in self._models:
            self._models.add(model)
            self._sample_rollout(model, now)
        slot = self._slot(now)
        if record.retries or record.retry_stop or record.held_s or record.spill or record.queue:
            _count_events(slot.events, model, record)
        error = record.status >= 500
        if record.backend is None:
            counts = slot.local.setdefault(model, [0, 0])
            counts[0] += 1
            counts[1] += error
            return
        cell = self._cell(slot, model, str(record.backend))
        cell.requests += 1
        cell.errors += error
        bits = self._bucket_bits
        # The lowest value of the value's HDR bucket: keep the top `bits` bits, exactly as
        # the histogram's sub-buckets do (tests/telemetry/test_stats.py checks it against hdrh).
        value = to_us(record.total_s)
        shift = value.bit_length() - bits
        if shift > 0:
            value = value >> shift << shift
        cell.pending[value] = cell.pending.get(value, 0) + 1
        value = to_us(record.total_s - (record.upstream_s or 0.0))
        shift = value.bit_length() - bits
        if shift > 0:
            value = value >> shift << shift
        proxy = self._cell(slot, model, PROXY)
        proxy.requests += 1
        proxy.pending[value] = proxy.pending.get(value, 0) + 1

    def _cell(self, slot: Slot, model: str, series: str) -> Cell:
        cell = slot.cells.get((model, series))
        if cell is None:
            cell = slot.cells[(model, series)] = Cell(self._histogram())
        return cell

    def _histogram(self) -> HdrHistogram:
        return new_histogram(self.settings.significant_figures)

    def add_parity(self, model: str, result: str, now: float) -> None:
        """Count one shadow comparison (`match`, `mismatch`, `error`, `dropped`)."""
        self._models.add(model)
        slot = self._slot(now)
        slot.parity[(model, result)] = slot.parity.get((model, result), 0) + 1
        self._parity_total[(model, result)] = self._parity_total.get((model, result), 0) + 1

    def add_event(self, model: str, event: str, now: float) -> None:
        """Count one event of `slots.EVENTS` that is no request's (a readiness probe)."""
        self._models.add(model)
        events = self._slot(now).events
        events[(model, event)] = events.get((model, event), 0) + 1

    def note_rollout(self, model: str, now: float, event: str | None = None) -> None:
        """Sample the rollout source now (call on a weight change so the chart shows it)."""
        self._models.add(model)
        self._sample_rollout(model, now, event)

    def _sample_rollout(self, model: str, t: float, event: str | None = None) -> None:
        current = self.rollout(model)
        points = self._weights.setdefault(model, deque(maxlen=self.settings.history_points))
        last = points[-1] if points else None
        if (
            event is None
            and last is not None
            and last.weight is not None
            and current.weight is not None
            and current.weight < last.weight
        ):
            # Traffic moved back to legacy: that is what a rollback does, whoever did it.
            event = "rollback"
        if (
            last is not None
            and event is None
            and (last.weight, last.state) == (current.weight, current.state)
        ):
            return  # unchanged: one point per change keeps the series short
        points.append(_WeightPoint(t, current.weight, current.state, event))

    # --- sharing between workers ------------------------------------------------------

    def export(self, now: float) -> dict[str, Any]:
        """This process's window, JSON-ready, for other workers to merge (`snapshot(peers=)`).

        Histograms travel in HdrHistogram's compressed base64 encoding; a closed slot is
        encoded once, only the open one again at every export.
        """
        slots = []
        for slot in self._window(now):
            is_open = slot is self._slots[-1]
            encoded: dict[tuple[str, str], str] = {}
            for (model, series), cell in slot.cells.items():
                key = (slot.index, model, series)
                text = None if is_open else self._encoded.get(key)
                if text is None:
                    text = cell.histogram().encode().decode("ascii")
                    if not is_open:
                        self._encoded[key] = text
                encoded[(model, series)] = text
            slots.append(slot_to_json(slot, encoded))
        return {
            "t": now,
            "slot_s": self.settings.slot_s,
            "significant_figures": self.settings.significant_figures,
            "models": sorted(self._models),
            "slots": slots,
            "parity_total": [[m, res, n] for (m, res), n in self._parity_total.items()],
            "clients": self.inventory.export(),
        }

    # --- reading ----------------------------------------------------------------------

    def _window(self, now: float) -> list[Slot]:
        oldest = int(now // self.settings.slot_s) - self.settings.slots + 1
        return [slot for slot in self._slots if slot.index >= oldest]

    def snapshot(self, now: float, peers: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """Everything the report and the dashboard show, JSON-ready (times in ms, epoch s).

        `peers` are other workers' `export()`s (same settings): their slots in the window,
        parity and client counts are added to this process's. The time series before the
        window is this process's alone (only summaries are kept that far back).
        """
        figures, slot_s = self.settings.significant_figures, self.settings.slot_s
        window = self._window(now)
        oldest = int(now // slot_s) - self.settings.slots + 1
        peer_slots = [
            slot_from_json(slot, figures)
            for peer in peers
            if peer.get("slot_s") == slot_s
            for slot in peer["slots"]
            if slot["index"] >= oldest
        ]
        parity_total = dict(self._parity_total)
        names = self._models | set(self.inventory.models())
        for peer in peers:
            names |= set(peer["models"]) | set(peer["clients"])
            for model, result, n in peer["parity_total"]:
                parity_total[(model, result)] = parity_total.get((model, result), 0) + n
        clients = [peer["clients"] for peer in peers]
        every = [*window, *peer_slots]
        models: dict[str, Any] = {}
        for model in sorted(names):
            rollout = self.rollout(model)
            models[model] = model_view(
                model_totals(model, every, figures),
                {result: n for (m, result), n in parity_total.items() if m == model},
                weight=rollout.weight,
                state=rollout.state,
                weights=[
                    {"t": p.t, "weight": p.weight, "state": p.state, "event": p.event}
                    for p in self._weights.get(model, ())
                ],
                clients=self.inventory.report(model, clients),
            )
        if peer_slots:
            start = oldest * slot_s
            series = [point for point in self._history if point["t"] < start]
            by_index: dict[int, list[Slot]] = {}
            for slot in every:
                by_index.setdefault(slot.index, []).append(slot)
            series += [
                slot_summary(combined(by_index[i], figures), slot_s) for i in sorted(by_index)
            ]
        else:
            series = list(self._history)
            if self._slots and self._slots[-1] in window:
                series.append(slot_summary(self._slots[-1], slot_s))  # the open slot, so far
        return {
            "window_s": self.settings.window_s,
            "slot_s": slot_s,
            "significant_figures": figures,
            "now": now,
            "models": models,
            "series": series,
        }
