"""The JSON the admin API shows: plain functions from the proxy's state to dicts.

Read only: a view never changes what it shows, and knows nothing of HTTP.
"""

from __future__ import annotations

from typing import Any

from proxy.config.cutover import RolloutConfig
from proxy.cutover import Cutover
from proxy.cutover.fleet import FleetWindow
from proxy.cutover.probe import ProbeResult
from proxy.cutover.rollout import Action, RolloutState, RolloutStatus, WindowStats, next_step
from proxy.cutover.table import ModelState
from proxy.runtime import Runtime
from proxy.shadow.tally import ParityCounts


def cutover_view(cutover: Cutover, name: str) -> dict[str, Any]:
    """One model's weights, rollout and gate window (without shadow parity).

    Raises:
        UnknownModelError: the config serves no such model.
    """
    state = cutover.state(name)
    policy = cutover.config.models[name].rollout
    out: dict[str, Any] = {
        "model": name,
        "serverless_percent": state.serverless_percent,
        "shadow_percent": state.shadow_percent,
        "source": state.source,
        "changed_at": state.changed_at,
        # False: a rollback or pause is in force here but the store is out; it is written
        # (and other replicas follow) when the store answers again.
        "persisted": cutover.persisted(name),
        "rollout": None,
    }
    if policy is not None:
        out["rollout"] = rollout_view(
            policy,
            state,
            cutover.last_action(name),
            cutover.last_probe(name),
            probing=cutover.probing(name),
        )
    out["window"] = fleet_view(cutover.fleet_window(name))
    return out


def rollout_view(
    policy: RolloutConfig,
    state: ModelState,
    action: Action | None,
    probe: ProbeResult | None = None,
    *,
    probing: bool = False,
) -> dict[str, Any]:
    """Where the model's rollout is, its policy, the last gate evaluation, and the last
    readiness probe (`probe`: null until one was sent; `probing`: one is in flight)."""
    rollout = state.rollout or RolloutState(RolloutStatus.RUNNING, state.changed_at)
    return {
        "status": str(rollout.status),
        "since": rollout.since,
        "reason": rollout.reason,
        "steps": list(policy.steps),
        "next_step": next_step(policy.steps, state.serverless_percent),
        "interval_s": policy.interval,
        "window_s": policy.window_s,
        "on_failure": policy.on_failure,
        "probe_timeout_s": None if policy.probe is None else policy.probe.timeout_s,
        "evaluation": None if action is None else evaluation_view(action),
        "probe": None if probe is None else probe.to_json(),
        "probing": probing,
    }


def evaluation_view(action: Action) -> dict[str, Any]:
    """What the gates said at the last tick, gate by gate."""
    return {
        "action": action.kind,
        "reason": action.reason,
        "gates": [
            {
                "gate": g.gate,
                "outcome": str(g.outcome),
                "value": g.value,
                "limit": g.limit,
                "samples": g.samples,
                "min_samples": g.min_samples,
                "reason": g.reason,
            }
            for g in action.gates
        ],
    }


def window_view(window: WindowStats) -> dict[str, Any]:
    """The gate window's counts, latencies in milliseconds."""
    return {
        "serverless_calls": window.serverless_calls,
        "serverless_errors": window.serverless_errors,
        "serverless_p99_ms": None
        if window.serverless_p99_s is None
        else window.serverless_p99_s * 1000,
        "legacy_calls": window.legacy_calls,
        "legacy_p99_ms": None if window.legacy_p99_s is None else window.legacy_p99_s * 1000,
        "parity_samples": window.parity_samples,
        "parity_matches": window.parity_matches,
    }


def fleet_view(fleet: FleetWindow) -> dict[str, Any]:
    """The fleet's gate window: the merged counts, `shared` (false: the store did not
    answer, these are this replica's alone) and each replica's own under `replicas`."""
    return {
        **window_view(fleet.stats),
        "shared": fleet.shared,
        "replicas": {name: window_view(stats) for name, stats in fleet.replicas.items()},
    }


def gate_window_view(cutover: Cutover, name: str) -> dict[str, Any] | None:
    """The model's gate window over the fleet with its shadow results by kind, for the
    report and the dashboard; None for a model the config does not serve."""
    if name not in cutover.models():
        return None
    fleet = cutover.fleet_window(name)
    return {**fleet_view(fleet), "parity": ParityCounts(**fleet.parity).to_json()}


def model_view(runtime: Runtime, name: str, *, mismatches: bool) -> dict[str, Any]:
    """One model as the admin API shows it: the cutover view, its shadow parity, the
    process-wide shadow slots, and with `mismatches` the last mismatched requests. Parity
    and mismatches are the fleet window's (call `cutover.read_window` first for the other
    replicas' newest).

    Raises:
        UnknownModelError: the config serves no such model.
    """
    view = cutover_view(runtime.cutover, name)
    fleet = runtime.cutover.fleet_window(name)
    view["parity"] = ParityCounts(**fleet.parity).to_json()
    # Process-wide: every model's shadow calls share these slots.
    view["shadow"] = {
        "in_flight": runtime.shadow.in_flight,
        "max_concurrency": runtime.config.shadow.max_concurrency,
        "isolation": runtime.config.shadow.isolation,
        # The shadow worker process, once the first shadow call has started it.
        "worker_pid": runtime.shadow.worker_pid,
    }
    if mismatches:
        view["mismatches"] = [dict(m) for m in fleet.mismatches]
    return view
