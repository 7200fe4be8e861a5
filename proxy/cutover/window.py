"""The rollout gates' window as this process counts it: one model's calls, latencies and
shadow results since its current weight took effect, in time slots.

Not the report window of `proxy.telemetry.stats` (which keeps everything over a fixed
span): the gates must judge only what happened at the current weight, so this window
starts again whenever the weight moves (`restart`, with the new `fleet.Epoch`). Each slot
becomes a `fleet.SlotRecord`: the closed ones are published for the other replicas
(`shared`), and the open one counts here at once. In memory; no I/O, no clock of its own
(callers pass the time of each sample).

Latencies wait in a dict by HDR bucket and reach the slot's histogram when it is read:
`record_value` is pure Python and costs several times a dict increment on the hot path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from proxy.cutover.fleet import (
    HIGHEST_US,
    LOWEST_US,
    Epoch,
    SlotRecord,
    in_window,
    new_histogram,
    to_us,
)

# An HDR histogram keeps this many top bits of a value (its sub-bucket resolution): values
# wait in `pending` cut to them, so a slot holds a few thousand distinct ones at most.
BUCKET_BITS = new_histogram().sub_bucket_half_count_magnitude + 1


def bucketed_us(seconds: float) -> int:
    """The latency in µs, cut to the lowest value of its HDR bucket (the same bucket)."""
    value = to_us(seconds)
    shift = value.bit_length() - BUCKET_BITS
    return value >> shift << shift if shift > 0 else value


def is_error(status: int) -> bool:
    """A serverless answer that counts against the error-rate gate: 5xx, or 429 (capacity).

    Other 4xx are the client's own mistakes, and legacy answered them the same way.
    """
    return status >= 500 or status == 429


@dataclass(slots=True)
class Latencies:
    """A histogram and the values not recorded in it yet (µs, by count)."""

    hist: HdrHistogram = field(default_factory=new_histogram)
    pending: dict[int, int] = field(default_factory=dict)

    def add(self, seconds: float) -> None:
        value = bucketed_us(seconds)
        self.pending[value] = self.pending.get(value, 0) + 1

    def histogram(self) -> HdrHistogram | None:
        if self.pending:
            for value, count in self.pending.items():
                self.hist.record_value(min(max(value, LOWEST_US), HIGHEST_US), count)
            self.pending.clear()
        return self.hist if self.hist.get_total_count() else None


@dataclass(slots=True)
class LiveSlot:
    """What this process counted of one model in one slot."""

    index: int
    keep: int
    serverless_calls: int = 0
    serverless_errors: int = 0
    serverless: Latencies = field(default_factory=Latencies)
    legacy_calls: int = 0
    legacy: Latencies = field(default_factory=Latencies)
    parity: dict[str, int] = field(default_factory=dict)
    mismatches: deque[Mapping[str, Any]] = field(default_factory=deque)
    published: bool = False

    def record(self, replica: str, epoch: Epoch, slot_s: float) -> SlotRecord:
        """The slot as a record. Its histograms are this slot's own (read them at once:
        the open slot keeps counting into them)."""
        return SlotRecord(
            replica=replica,
            epoch=epoch,
            index=self.index,
            slot_s=slot_s,
            serverless_calls=self.serverless_calls,
            serverless_errors=self.serverless_errors,
            serverless_latency=self.serverless.histogram(),
            legacy_calls=self.legacy_calls,
            legacy_latency=self.legacy.histogram(),
            parity=tuple(self.parity.items()),
            mismatches=tuple(self.mismatches)[-self.keep :] if self.keep else (),
        )


class Window:
    """What this process saw of one model at its current weight, slot by slot.

    Args:
        slot_s: the slot length (`reporting.slot`, at most the model's window).
        keep: the mismatches kept per slot (`shadow.keep_mismatches`).
        epoch: the weight in force when the window starts.
    """

    def __init__(self, slot_s: float, keep: int, epoch: Epoch) -> None:
        self.slot_s = slot_s
        self.keep = keep
        self.epoch = epoch
        self.slots: dict[int, LiveSlot] = {}

    def restart(self, epoch: Epoch) -> None:
        """The weight moved: forget every slot (published ones stay in the store under
        their old epoch, which no reader counts any more)."""
        self.epoch = epoch
        self.slots.clear()

    def slot(self, now: float) -> LiveSlot:
        index = int(now // self.slot_s)
        slot = self.slots.get(index)
        if slot is None:
            slot = self.slots[index] = LiveSlot(index, self.keep)
        return slot

    def count_call(self, now: float, serverless: bool, status: int, seconds: float | None) -> None:
        """A serverless call counts whatever its status (latency when it has one); a legacy
        one only when it succeeded with a latency (the p99 gate's denominator)."""
        slot = self.slots.get(int(now // self.slot_s)) or self.slot(now)
        if serverless:
            slot.serverless_calls += 1
            if status >= 500 or status == 429:  # is_error, inline: once per request
                slot.serverless_errors += 1
            if seconds is not None:
                # `bucketed_us`, inline (once per request); clamped when recorded.
                value = int(seconds * 1e6 + 0.5)
                shift = value.bit_length() - BUCKET_BITS
                if shift > 0:
                    value = value >> shift << shift
                pending = slot.serverless.pending
                pending[value] = pending.get(value, 0) + 1
        elif seconds is not None and not is_error(status):
            slot.legacy_calls += 1
            slot.legacy.add(seconds)

    def count_parity(self, now: float, kind: str) -> None:
        parity = self.slot(now).parity
        parity[kind] = parity.get(kind, 0) + 1

    def count_mismatch(self, now: float, mismatch: Mapping[str, Any]) -> None:
        if self.keep:
            mismatches = self.slot(now).mismatches
            mismatches.append(mismatch)
            if len(mismatches) > self.keep:
                mismatches.popleft()

    def records(self, replica: str, now: float, window_s: float) -> list[SlotRecord]:
        """This process's slots in the window, the open one included; older ones are
        dropped."""
        out = []
        for index in sorted(self.slots):
            record = self.slots[index].record(replica, self.epoch, self.slot_s)
            if in_window(record, now, window_s):
                out.append(record)
            else:
                del self.slots[index]
        return out

    def closed(self, now: float) -> list[LiveSlot]:
        """The slots that ended and are not published yet, oldest first."""
        current = int(now // self.slot_s)
        return [
            self.slots[i] for i in sorted(self.slots) if i < current and not self.slots[i].published
        ]
