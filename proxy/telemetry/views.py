"""The JSON shapes of the migration report and the dashboard, built from added-up slots.

Pure: no I/O, no clock. What the figures mean is decided here (percentiles in ms, rates,
the serverless/legacy ratio, the latency distribution); how they are counted is in
`slots` and `stats`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any

from hdrh.histogram import HdrHistogram

from proxy.telemetry.slots import BACKENDS, PARITY_RESULTS, PROXY, Cell, ModelTotals, Slot

PERCENTILES = (50.0, 95.0, 99.0)
# Bucket edges, in ms, of the latency-distribution chart: √2 apart from 0.25 ms to 4 s,
# fine enough to see a shift of one step.
HISTOGRAM_EDGES_MS = tuple(round(0.25 * 2 ** (i / 2), 3) for i in range(29))

_NO_PERCENTILES: dict[str, float | None] = {f"p{p:g}": None for p in PERCENTILES}


def percentile_dict(hist: HdrHistogram) -> dict[str, float | None]:
    """p50/p95/p99 in milliseconds (None for an empty histogram)."""
    if hist.get_total_count() == 0:
        return dict(_NO_PERCENTILES)
    values = hist.get_percentile_to_value_dict(list(PERCENTILES))
    return {f"p{p:g}": values[p] / 1e3 for p in PERCENTILES}


def slot_summary(slot: Slot, slot_s: float) -> dict[str, Any]:
    """One point of the time series: per model and series, counts and percentiles."""
    models: dict[str, Any] = {}
    for (model, series), cell in slot.cells.items():
        models.setdefault(model, {})[series] = {
            "requests": cell.requests,
            "errors": cell.errors,
            **percentile_dict(cell.histogram()),
        }
    return {"t": slot.index * slot_s, "models": models}


def model_view(
    totals: ModelTotals,
    parity_total: Mapping[str, int],
    *,
    weight: float | None,
    state: str | None,
    weights: Iterable[Mapping[str, Any]],
    clients: list[dict[str, Any]],
) -> dict[str, Any]:
    """One model's row of the report.

    Args:
        totals: the model's counts added up over the window.
        parity_total: shadow results since start, by result.
        weight, state: the rollout now.
        weights: the weight points over time.
        clients: the legacy client inventory's rows.
    """
    merged, local, parity = totals.cells, totals.local, totals.parity
    backends = {name: _backend_view(merged.get(name)) for name in BACKENDS}
    requests = sum(b["requests"] for b in backends.values()) + local[0]
    errors = sum(b["errors"] for b in backends.values()) + local[1]
    legacy, serverless = backends["legacy"], backends["serverless"]
    ratio = {key: _ratio(serverless[key], legacy[key]) for key in (f"p{p:g}" for p in PERCENTILES)}
    proxy = merged.get(PROXY)
    compared = parity["match"] + parity["mismatch"]
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "local_replies": local[0],
        "backends": backends,
        "ratio": ratio,
        "proxy": percentile_dict(proxy.hist) if proxy else dict(_NO_PERCENTILES),
        "weight": weight,
        "state": state,
        "weights": list(weights),
        "parity": {
            **parity,
            "rate": parity["match"] / compared if compared else None,
            "total": {r: parity_total.get(r, 0) for r in PARITY_RESULTS},
        },
        "histogram": {
            name: _distribution(merged[name].hist) if name in merged else None for name in BACKENDS
        },
        "clients": clients,
        "events": dict(totals.events),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _backend_view(cell: Cell | None) -> dict[str, Any]:
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
