"""One model's run-time state as the store keeps it. Pure: a frozen value and its JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from proxy.cutover.rollout import RolloutState, RolloutStatus

Source = Literal["config", "admin", "rollout"]


@dataclass(frozen=True, slots=True)
class ModelState:
    """One model's run-time state, as stored."""

    serverless_percent: float
    shadow_percent: float
    rollout: RolloutState | None
    source: Source
    changed_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "serverless_percent": self.serverless_percent,
            "shadow_percent": self.shadow_percent,
            "rollout": None
            if self.rollout is None
            else {
                "status": str(self.rollout.status),
                "since": self.rollout.since,
                "reason": self.rollout.reason,
            },
            "source": self.source,
            "changed_at": self.changed_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelState:
        ro = data.get("rollout")
        return cls(
            serverless_percent=float(data["serverless_percent"]),
            shadow_percent=float(data.get("shadow_percent", 0.0)),
            rollout=None
            if not ro
            else RolloutState(
                RolloutStatus(ro["status"]), float(ro["since"]), ro.get("reason", "")
            ),
            source=data.get("source", "admin"),
            changed_at=float(data.get("changed_at", 0.0)),
        )
