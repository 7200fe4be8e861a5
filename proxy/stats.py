"""In-process latency and migration statistics: HDR histograms over a sliding window.

Holds, per model and backend, what the migration report and the dashboard show: request
and error counts, end-to-end latency, the proxy's own share, the cutover weight over time,
shadow parity and the legacy client inventory. Memory only: no I/O, no logging; the
caller passes the clock so tests are deterministic.

Percentiles come from `hdrh` histograms (HdrHistogram), not from Prometheus buckets: an
HDR histogram keeps every value to a fixed number of significant figures, so p99 is read,
not interpolated. The window is a ring of fixed slots; a slot's histograms are dropped
once it leaves the window, and its summary (a few numbers) stays for the time series.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from proxy.models import ExchangeRecord

DEFAULT_WINDOW_S = 300.0
DEFAULT_SLOT_S = 10.0
DEFAULT_HISTORY_POINTS = 360
# 2 figures: every value within 1% (sub-buckets of 1/128), 26 kB per histogram; 3 figures
# would cost 190 kB each, times models × backends × slots.
DEFAULT_SIGNIFICANT_FIGURES = 2
DEFAULT_CLIENT_TOP_N = 20
# Exact counts are kept for this many client keys per model before the smallest go to
# `other`: enough head-room that the top N is stable under churn.
CLIENT_CAPACITY_FACTOR = 8
# Latencies are recorded in microseconds, from 1 µs up to one hour; longer ones clamp.
LOWEST_US = 1
HIGHEST_US = 3_600_000_000
PERCENTILES = (50.0, 95.0, 99.0)
BACKENDS = ("legacy", "serverless")
PROXY = "proxy"
OTHER = "other"
# Shadow comparison results (the `result` label of the parity counter too).
PARITY_RESULTS = ("match", "mismatch", "error", "dropped")
# Bucket edges, in ms, of the latency-distribution chart: √2 apart from 0.25 ms to 4 s,
# fine enough to see a shift of one step.
HISTOGRAM_EDGES_MS = tuple(round(0.25 * 2 ** (i / 2), 3) for i in range(29))


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
    """What the cutover store says about one model now (issue 3's objects, or the config).

    `weight` is the percent of requests sent to serverless; None where nothing says.
    """

    weight: float | None = None
    state: str | None = None


RolloutSource = Callable[[str], Rollout]


def _no_rollout(model: str) -> Rollout:
    return Rollout()


def is_legacy_client(record: ExchangeRecord) -> bool:
    """Did this request come in on the 1.x URL (`/model/<name>/<v>/invocations`, §1.2)?

    Such a client must still be migrated, whatever body format it sent and wherever the
    proxy routed it.
    """
    return (
        record.model is not None
        and record.path.startswith("/model/")
        and record.path.endswith("/invocations")
    )


_NO_PERCENTILES: dict[str, float | None] = {f"p{p:g}": None for p in PERCENTILES}


def percentile_dict(hist: HdrHistogram) -> dict[str, float | None]:
    """p50/p95/p99 in milliseconds (None for an empty histogram)."""
    if hist.get_total_count() == 0:
        return dict(_NO_PERCENTILES)
    values = hist.get_percentile_to_value_dict(list(PERCENTILES))
    return {f"p{p:g}": values[p] / 1e3 for p in PERCENTILES}


@dataclass(slots=True)
class _Cell:
    """One model × series (legacy, serverless or proxy) in one slot.

    New values wait in `pending`, counted by the lowest value of their HDR bucket, and
    reach the histogram when it is read: `record_value` is pure Python and costs several
    times a dict increment, and a slot sees few distinct buckets.
    """

    hist: HdrHistogram
    requests: int = 0
    errors: int = 0
    pending: dict[int, int] = field(default_factory=dict)

    def histogram(self) -> HdrHistogram:
        """The histogram with every value recorded so far."""
        if self.pending:
            for value, count in self.pending.items():
                self.hist.record_value(value, count)
            self.pending.clear()
        return self.hist


@dataclass(slots=True)
class _Slot:
    index: int
    cells: dict[tuple[str, str], _Cell] = field(default_factory=dict)
    # Requests that never reached a backend (local replies), by model: (requests, errors).
    local: dict[str, list[int]] = field(default_factory=dict)
    parity: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(slots=True)
class ClientEntry:
    """One client key's legacy use of one model, counted exactly since it was (re)admitted."""

    requests: int = 0
    last_seen: float = 0.0
    formats: dict[str, int] = field(default_factory=dict)


class ClientInventory:
    """Which client keys still call each model through the legacy protocol.

    Bounded: per model, exact counts for at most `top_n × CLIENT_CAPACITY_FACTOR` keys;
    when full, the key with the fewest requests is folded into `other` to make room, so a
    key that calls often is always named, and the totals always add up.
    """

    def __init__(self, top_n: int = DEFAULT_CLIENT_TOP_N) -> None:
        self.top_n = top_n
        self.capacity = top_n * CLIENT_CAPACITY_FACTOR
        self._models: dict[str, dict[str, ClientEntry]] = {}
        self._other: dict[str, ClientEntry] = {}
        self._top: dict[str, frozenset[str]] = {}

    def observe(self, model: str, key: str, legacy_format: str, now: float) -> None:
        entries = self._models.setdefault(model, {})
        entry = entries.get(key)
        if entry is None:
            if len(entries) >= self.capacity:
                self._evict(model, entries)
            entry = entries[key] = ClientEntry()
        entry.requests += 1
        entry.last_seen = now
        entry.formats[legacy_format] = entry.formats.get(legacy_format, 0) + 1
        top = self._top.get(model)
        if top is None or (key not in top and len(top) < self.top_n):
            self._top[model] = frozenset(k for k, _ in self.ranked(model)[: self.top_n])

    def _evict(self, model: str, entries: dict[str, ClientEntry]) -> None:
        victim = min(entries, key=lambda k: (entries[k].requests, entries[k].last_seen))
        gone = entries.pop(victim)
        other = self._other.setdefault(model, ClientEntry())
        other.requests += gone.requests
        other.last_seen = max(other.last_seen, gone.last_seen)
        for fmt, count in gone.formats.items():
            other.formats[fmt] = other.formats.get(fmt, 0) + count

    def refresh_top(self) -> None:
        """Re-rank every model's named keys (once per slot: ranking is O(keys))."""
        for model in self._models:
            self._top[model] = frozenset(k for k, _ in self.ranked(model)[: self.top_n])

    def label(self, model: str, key: str) -> str:
        """`key` if it is among the model's top N at the last ranking, else `other`."""
        return key if key in self._top.get(model, frozenset()) else OTHER

    def ranked(self, model: str) -> list[tuple[str, ClientEntry]]:
        entries = self._models.get(model, {})
        return sorted(entries.items(), key=lambda kv: (-kv[1].requests, kv[0]))

    def models(self) -> Iterable[str]:
        return self._models.keys()

    def report(self, model: str, peers: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
        """The top N keys, then `other` (everything else), most requests first.

        `peers` are other workers' `export()`s: their counts are added key by key.
        """
        entries = {key: _copy(entry) for key, entry in self._models.get(model, {}).items()}
        rest = _copy(self._other.get(model, ClientEntry()))
        for peer in peers:
            data = peer.get(model)
            if data is None:
                continue
            for key, requests, last_seen, formats in data["entries"]:
                _fold(
                    entries.setdefault(key, ClientEntry()),
                    ClientEntry(requests, last_seen, formats),
                )
            requests, last_seen, formats = data["other"]
            _fold(rest, ClientEntry(requests, last_seen, formats))
        ranked = sorted(entries.items(), key=lambda kv: (-kv[1].requests, kv[0]))
        rows = [_client_row(key, entry) for key, entry in ranked[: self.top_n]]
        for _, entry in ranked[self.top_n :]:
            _fold(rest, entry)
        if rest.requests:
            rows.append(_client_row(OTHER, rest))
        return rows

    def export(self) -> dict[str, Any]:
        """Every count, JSON-ready, for another worker's `report(peers=...)`."""
        out: dict[str, Any] = {}
        for model, entries in self._models.items():
            other = self._other.get(model, ClientEntry())
            out[model] = {
                "entries": [[k, e.requests, e.last_seen, e.formats] for k, e in entries.items()],
                "other": [other.requests, other.last_seen, other.formats],
            }
        return out


def _copy(entry: ClientEntry) -> ClientEntry:
    return ClientEntry(entry.requests, entry.last_seen, dict(entry.formats))


def _fold(into: ClientEntry, entry: ClientEntry) -> None:
    into.requests += entry.requests
    into.last_seen = max(into.last_seen, entry.last_seen)
    for fmt, count in entry.formats.items():
        into.formats[fmt] = into.formats.get(fmt, 0) + count


def _client_row(key: str, entry: ClientEntry) -> dict[str, Any]:
    return {
        "client": key,
        "requests": entry.requests,
        "last_seen": entry.last_seen,
        "formats": dict(sorted(entry.formats.items())),
    }


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
        self._slots: deque[_Slot] = deque()
        self._history: deque[dict[str, Any]] = deque(maxlen=self.settings.history_points)
        self._weights: dict[str, deque[_WeightPoint]] = {}
        self._parity_total: dict[tuple[str, str], int] = {}
        self._models: set[str] = set()
        # An HDR histogram keeps this many top bits of a value (its sub-bucket resolution).
        self._bucket_bits = self._hist().sub_bucket_half_count_magnitude + 1
        # Encoded histograms of closed slots (they never change), for `export`.
        self._encoded: dict[tuple[int, str, str], str] = {}

    # --- recording ---------------------------------------------------------------------

    def _hist(self) -> HdrHistogram:
        return HdrHistogram(LOWEST_US, HIGHEST_US, self.settings.significant_figures)

    def _slot(self, now: float) -> _Slot:
        index = int(now // self.settings.slot_s)
        if self._slots and self._slots[-1].index == index:
            return self._slots[-1]
        if self._slots and self._slots[-1].index > index:
            # A clock step backwards: keep counting in the newest slot.
            return self._slots[-1]
        self._rotate(index)
        slot = _Slot(index)
        self._slots.append(slot)
        return slot

    def _rotate(self, index: int) -> None:
        """Close the open slot: summarise it into the history, drop slots out of the window."""
        if self._slots:
            self._history.append(self._summary(self._slots[-1]))
        oldest = index - self.settings.slots + 1
        while self._slots and self._slots[0].index < oldest:
            self._slots.popleft()
        self._encoded = {k: v for k, v in self._encoded.items() if k[0] >= oldest}
        self.inventory.refresh_top()
        for model in self._models:
            self._sample_rollout(model, index * self.settings.slot_s)

    def observe(self, record: ExchangeRecord, now: float) -> None:
        """Count one finished request (called once per record, after the response)."""
        model = record.model
        if model is None:
            return  # no configured model: nothing to report per model (404 on an unknown name)
        if model not in self._models:
            self._models.add(model)
            self._sample_rollout(model, now)
        slot = self._slot(now)
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
        # the histogram's sub-buckets do (tests/test_stats.py checks it against hdrh).
        value = _us(record.total_s)
        shift = value.bit_length() - bits
        if shift > 0:
            value = value >> shift << shift
        cell.pending[value] = cell.pending.get(value, 0) + 1
        value = _us(record.total_s - (record.upstream_s or 0.0))
        shift = value.bit_length() - bits
        if shift > 0:
            value = value >> shift << shift
        proxy = self._cell(slot, model, PROXY)
        proxy.requests += 1
        proxy.pending[value] = proxy.pending.get(value, 0) + 1

    def _cell(self, slot: _Slot, model: str, series: str) -> _Cell:
        cell = slot.cells.get((model, series))
        if cell is None:
            cell = slot.cells[(model, series)] = _Cell(self._hist())
        return cell

    def observe_client(self, model: str, key: str, legacy_format: str | None, now: float) -> None:
        """Count one legacy-protocol request of a client key (see `is_legacy_client`)."""
        self.inventory.observe(model, key, legacy_format or "passthrough", now)

    def observe_shadow(self, model: str, result: str, now: float) -> None:
        """Count one shadow comparison (`match`, `mismatch`, `error`, `dropped`)."""
        self._models.add(model)
        slot = self._slot(now)
        slot.parity[(model, result)] = slot.parity.get((model, result), 0) + 1
        self._parity_total[(model, result)] = self._parity_total.get((model, result), 0) + 1

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
            and (last.weight, last.state)
            == (
                current.weight,
                current.state,
            )
        ):
            return  # unchanged: one point per change keeps the series short
        points.append(_WeightPoint(t, current.weight, current.state, event))

    # --- sharing between workers ------------------------------------------------------

    def export(self, now: float) -> dict[str, Any]:
        """This process's window, JSON-ready, for other workers to merge (`snapshot(peers=)`).

        Histograms travel in HdrHistogram's compressed base64 encoding; a closed slot is
        encoded once, only the open one again at every export.
        """
        window = self._window(now)
        slots = []
        for slot in window:
            is_open = slot is self._slots[-1]
            cells = []
            for (model, series), cell in slot.cells.items():
                key = (slot.index, model, series)
                encoded = None if is_open else self._encoded.get(key)
                if encoded is None:
                    encoded = cell.histogram().encode().decode("ascii")
                    if not is_open:
                        self._encoded[key] = encoded
                cells.append([model, series, cell.requests, cell.errors, encoded])
            slots.append(
                {
                    "index": slot.index,
                    "cells": cells,
                    "local": [[m, r, e] for m, (r, e) in slot.local.items()],
                    "parity": [[m, res, n] for (m, res), n in slot.parity.items()],
                }
            )
        return {
            "t": now,
            "slot_s": self.settings.slot_s,
            "significant_figures": self.settings.significant_figures,
            "models": sorted(self._models),
            "slots": slots,
            "parity_total": [[m, res, n] for (m, res), n in self._parity_total.items()],
            "clients": self.inventory.export(),
        }

    def _import_slot(self, data: Mapping[str, Any]) -> _Slot:
        slot = _Slot(int(data["index"]))
        for model, series, requests, errors, encoded in data["cells"]:
            hist = self._hist()
            hist.decode_and_add(encoded.encode("ascii"))
            slot.cells[(model, series)] = _Cell(hist, requests, errors)
        slot.local = {m: [r, e] for m, r, e in data["local"]}
        slot.parity = {(m, res): n for m, res, n in data["parity"]}
        return slot

    # --- reading ----------------------------------------------------------------------

    def _summary(self, slot: _Slot) -> dict[str, Any]:
        models: dict[str, Any] = {}
        for (model, series), cell in slot.cells.items():
            models.setdefault(model, {})[series] = {
                "requests": cell.requests,
                "errors": cell.errors,
                **percentile_dict(cell.histogram()),
            }
        return {"t": slot.index * self.settings.slot_s, "models": models}

    def _window(self, now: float) -> list[_Slot]:
        oldest = int(now // self.settings.slot_s) - self.settings.slots + 1
        return [slot for slot in self._slots if slot.index >= oldest]

    def snapshot(self, now: float, peers: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """Everything the report and the dashboard show, JSON-ready (times in ms, epoch s).

        `peers` are other workers' `export()`s (same settings): their slots in the window,
        parity and client counts are added to this process's. The time series before the
        window is this process's alone (only summaries are kept that far back).
        """
        window = self._window(now)
        oldest = int(now // self.settings.slot_s) - self.settings.slots + 1
        peer_slots = [
            self._import_slot(slot)
            for peer in peers
            if peer.get("slot_s") == self.settings.slot_s
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
            models[model] = self._model_view(model, every, parity_total, clients)
        if peer_slots:
            start = oldest * self.settings.slot_s
            series = [point for point in self._history if point["t"] < start]
            by_index: dict[int, list[_Slot]] = {}
            for slot in every:
                by_index.setdefault(slot.index, []).append(slot)
            series += [self._summary(self._combined(by_index[i])) for i in sorted(by_index)]
        else:
            series = list(self._history)
            if self._slots and self._slots[-1] in window:
                series.append(self._summary(self._slots[-1]))  # the open slot, so far
        return {
            "window_s": self.settings.window_s,
            "slot_s": self.settings.slot_s,
            "significant_figures": self.settings.significant_figures,
            "now": now,
            "models": models,
            "series": series,
        }

    def _combined(self, slots: list[_Slot]) -> _Slot:
        """One slot holding the cells of several workers' slots of the same index."""
        if len(slots) == 1:
            return slots[0]
        out = _Slot(slots[0].index)
        for slot in slots:
            for key, cell in slot.cells.items():
                into = out.cells.get(key)
                if into is None:
                    into = out.cells[key] = _Cell(self._hist())
                into.requests += cell.requests
                into.errors += cell.errors
                into.hist.add(cell.histogram())
        return out

    def _model_view(
        self,
        model: str,
        window: list[_Slot],
        parity_total: Mapping[tuple[str, str], int],
        peer_clients: Sequence[Mapping[str, Any]],
    ) -> dict[str, Any]:
        merged: dict[str, _Cell] = {}
        local = [0, 0]
        parity = dict.fromkeys(PARITY_RESULTS, 0)
        for slot in window:
            for series in (*BACKENDS, PROXY):
                cell = slot.cells.get((model, series))
                if cell is None:
                    continue
                into = merged.get(series)
                if into is None:
                    into = merged[series] = _Cell(self._hist())
                into.requests += cell.requests
                into.errors += cell.errors
                into.hist.add(cell.histogram())
            counts = slot.local.get(model)
            if counts is not None:
                local[0] += counts[0]
                local[1] += counts[1]
            for result in PARITY_RESULTS:
                parity[result] += slot.parity.get((model, result), 0)
        backends = {name: _backend_view(merged.get(name)) for name in BACKENDS}
        requests = sum(b["requests"] for b in backends.values()) + local[0]
        errors = sum(b["errors"] for b in backends.values()) + local[1]
        legacy, serverless = backends["legacy"], backends["serverless"]
        ratio = {
            key: _ratio(serverless[key], legacy[key]) for key in (f"p{p:g}" for p in PERCENTILES)
        }
        proxy = merged.get(PROXY)
        rollout = self.rollout(model)
        compared = parity["match"] + parity["mismatch"]
        totals = {r: parity_total.get((model, r), 0) for r in PARITY_RESULTS}
        return {
            "requests": requests,
            "errors": errors,
            "error_rate": errors / requests if requests else None,
            "local_replies": local[0],
            "backends": backends,
            "ratio": ratio,
            "proxy": percentile_dict(proxy.hist) if proxy else percentile_dict(self._hist()),
            "weight": rollout.weight,
            "state": rollout.state,
            "weights": [
                {"t": p.t, "weight": p.weight, "state": p.state, "event": p.event}
                for p in self._weights.get(model, ())
            ],
            "parity": {
                **parity,
                "rate": parity["match"] / compared if compared else None,
                "total": totals,
            },
            "histogram": {
                name: _distribution(merged[name].hist) if name in merged else None
                for name in BACKENDS
            },
            "clients": self.inventory.report(model, peer_clients),
        }


def _us(seconds: float) -> int:
    return min(max(round(seconds * 1e6), LOWEST_US), HIGHEST_US)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _backend_view(cell: _Cell | None) -> dict[str, Any]:
    if cell is None:
        return {"requests": 0, "errors": 0, "error_rate": None, **_NO_PERCENTILES}
    return {
        "requests": cell.requests,
        "errors": cell.errors,
        "error_rate": cell.errors / cell.requests if cell.requests else None,
        **percentile_dict(cell.histogram()),
    }


def _distribution(hist: HdrHistogram) -> dict[str, Any]:
    """Counts per latency bucket (edges in ms; the last bucket is open-ended)."""
    counts = [0] * (len(HISTOGRAM_EDGES_MS) + 1)
    edges_us = [edge * 1e3 for edge in HISTOGRAM_EDGES_MS]
    for item in hist.get_recorded_iterator():
        counts[bisect.bisect_left(edges_us, item.value_iterated_to)] += (
            item.count_at_value_iterated_to
        )
    return {"edges_ms": list(HISTOGRAM_EDGES_MS), "counts": counts}
