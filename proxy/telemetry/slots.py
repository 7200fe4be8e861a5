"""One time slot of the statistics window: per model and series an HDR histogram with its
counts, the slot's JSON form for other workers, and the adding-up of slots.

Memory only: no I/O, no clock. The window that rotates slots lives in `stats`; the JSON
views built from them in `views`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

# Latencies are recorded in microseconds, from 1 µs up to one hour; longer ones clamp.
LOWEST_US = 1
HIGHEST_US = 3_600_000_000
# The series of a model: one per backend, and the proxy's own share of the time.
BACKENDS = ("legacy", "serverless")
PROXY = "proxy"
# Shadow comparison results (the `result` label of the parity counter too).
PARITY_RESULTS = ("match", "mismatch", "error", "dropped")
# What the endpoint's realities did (README "When the endpoint is slow, cold, rate-limited
# or gone"), counted per model: retries sent, requests whose retries stopped with attempts
# left, requests held for a cold start, spilled back to legacy, that waited in the model's
# queue, and that the queue refused; and the readiness probes before rollout steps.
EVENTS = (
    "retries",
    "retry_stops",
    "holds",
    "spill_backs",
    "queued",
    "queue_rejected",
    "probes_ok",
    "probes_failed",
)


def new_histogram(significant_figures: int) -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, significant_figures)


def to_us(seconds: float) -> int:
    """A latency in whole microseconds, clamped to what a histogram holds."""
    return min(max(round(seconds * 1e6), LOWEST_US), HIGHEST_US)


@dataclass(slots=True)
class Cell:
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

    def add(self, other: Cell) -> None:
        """Add another cell's counts and histogram to this one."""
        self.requests += other.requests
        self.errors += other.errors
        self.hist.add(other.histogram())


@dataclass(slots=True)
class Slot:
    index: int
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    # Requests that never reached a backend (local replies), by model: (requests, errors).
    local: dict[str, list[int]] = field(default_factory=dict)
    parity: dict[tuple[str, str], int] = field(default_factory=dict)
    events: dict[tuple[str, str], int] = field(default_factory=dict)


def slot_to_json(slot: Slot, encoded: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    """A slot as another worker reads it; `encoded` holds each cell's histogram in
    HdrHistogram's compressed base64 encoding."""
    return {
        "index": slot.index,
        "cells": [
            [model, series, cell.requests, cell.errors, encoded[(model, series)]]
            for (model, series), cell in slot.cells.items()
        ],
        "local": [[m, r, e] for m, (r, e) in slot.local.items()],
        "parity": [[m, res, n] for (m, res), n in slot.parity.items()],
        "events": [[m, event, n] for (m, event), n in slot.events.items()],
    }


def slot_from_json(data: Mapping[str, Any], significant_figures: int) -> Slot:
    """The slot another worker wrote with `slot_to_json`."""
    slot = Slot(int(data["index"]))
    for model, series, requests, errors, encoded in data["cells"]:
        hist = new_histogram(significant_figures)
        hist.decode_and_add(encoded.encode("ascii"))
        slot.cells[(model, series)] = Cell(hist, requests, errors)
    slot.local = {m: [r, e] for m, r, e in data["local"]}
    slot.parity = {(m, res): n for m, res, n in data["parity"]}
    # A worker of an older version sends none.
    slot.events = {(m, event): n for m, event, n in data.get("events", ())}
    return slot


def combined(slots: list[Slot], significant_figures: int) -> Slot:
    """One slot holding the cells of several workers' slots of the same index."""
    if len(slots) == 1:
        return slots[0]
    out = Slot(slots[0].index)
    for slot in slots:
        for key, cell in slot.cells.items():
            into = out.cells.get(key)
            if into is None:
                into = out.cells[key] = Cell(new_histogram(significant_figures))
            into.add(cell)
    return out


@dataclass(slots=True)
class ModelTotals:
    """One model's counts added up over the slots of a window."""

    cells: dict[str, Cell] = field(default_factory=dict)
    local: list[int] = field(default_factory=lambda: [0, 0])
    parity: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARITY_RESULTS, 0))
    events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENTS, 0))


def model_totals(model: str, slots: Iterable[Slot], significant_figures: int) -> ModelTotals:
    """Add up one model's cells, local replies, parity and events over `slots`."""
    totals = ModelTotals()
    for slot in slots:
        for series in (*BACKENDS, PROXY):
            cell = slot.cells.get((model, series))
            if cell is None:
                continue
            into = totals.cells.get(series)
            if into is None:
                into = totals.cells[series] = Cell(new_histogram(significant_figures))
            into.add(cell)
        counts = slot.local.get(model)
        if counts is not None:
            totals.local[0] += counts[0]
            totals.local[1] += counts[1]
        for result in PARITY_RESULTS:
            totals.parity[result] += slot.parity.get((model, result), 0)
        if slot.events:
            for event in EVENTS:
                totals.events[event] += slot.events.get((model, event), 0)
    return totals
