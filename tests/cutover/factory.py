"""What the cutover tests share: a fixed clock, small configs, and Cutovers on one SQLite file."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from proxy.config import ProxyConfig, parse_config
from proxy.cutover import Cutover

ROLLOUT = {
    "steps": [1, 5, 25, 50, 100],
    "interval": "60s",
    "gates": {"error_rate": {"max": 0.1, "min_samples": 10}},
}


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(models: dict[str, Any] | None = None, **root: Any) -> ProxyConfig:
    return parse_config(
        {
            "backends": {
                "legacy": {"url": "http://127.0.0.1:5001"},
                "serverless": {"url": "http://127.0.0.1:5002"},
            },
            "models": models or {"iris": {"serverless_percent": 10}},
            **root,
        },
        {},
    )


def rollout_config(**extra: Any) -> ProxyConfig:
    return config({"iris": {"serverless_percent": 5, "rollout": {**ROLLOUT, **extra}}})


# Builds a started Cutover: `make(cfg=None, clock=None)`; every one shares the test's store.
Factory = Callable[..., Awaitable[Cutover]]
