"""The connection pools of one config, and each model's upstream paths.

Holds state, does no I/O of its own: a pool opens connections when a call needs one.
One pool per distinct backend settings, shared by every model that names them; shadow
calls get pools of their own with the same settings, so a slow shadow backend can never
take a connection the clients' calls need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

from proxy.config import ProxyConfig
from proxy.models import ModelRef
from proxy.protocol import paths
from proxy.retrybudget import RetryBudget
from proxy.upstream.aiohttp import AiohttpUpstream
from proxy.upstream.base import Upstream, UpstreamSettings
from proxy.upstream.http1 import HttptoolsUpstream
from proxy.upstream.targets import ModelTargets, Target, build_targets

UpstreamFactory = Callable[[UpstreamSettings], Upstream]
# `server.upstream_client` → the class that builds each pool.
CLIENTS: dict[str, UpstreamFactory] = {"httptools": HttptoolsUpstream, "aiohttp": AiohttpUpstream}
# Bounds the path memo: a model without `versions:` accepts any numeric version, so the
# keys are the clients' choice.
MEMO_SIZE = 1024


@dataclass
class Pools:
    """Everything a scoring call needs to reach a backend: the config, each model's
    targets, the pools, and the rendered upstream paths."""

    config: ProxyConfig
    targets: dict[str, ModelTargets]
    factory: UpstreamFactory = HttptoolsUpstream
    _primary: dict[UpstreamSettings, Upstream] = field(default_factory=dict)
    _shadow: dict[UpstreamSettings, Upstream] = field(default_factory=dict)
    # A pure function of the frozen config, remembered: rendering a path costs more than
    # the look-up, and the same few models take nearly every request.
    _paths: dict[tuple[str, ModelRef], str] = field(default_factory=dict)
    # The proxy-wide `retry_budget:` of the clients' calls: one per app, like the pools.
    retry_budget: RetryBudget = field(init=False)

    def __post_init__(self) -> None:
        self.retry_budget = RetryBudget(self.config.retry_budget)

    @classmethod
    def build(cls, config: ProxyConfig, factory: UpstreamFactory | None = None) -> Self:
        """The pools for `config`, with the client `server.upstream_client` names unless
        `factory` is given; every primary pool is opened now, so the first request pays
        no set-up."""
        if factory is None:
            factory = CLIENTS[config.server.upstream_client]
        built = cls(config, build_targets(config), factory)
        for targets in built.targets.values():
            for target in (targets.serverless, targets.legacy):
                if target is not None:
                    built.primary(target)
        return built

    def primary(self, target: Target) -> Upstream:
        """The pool the clients' calls to `target` use."""
        pool = self._primary.get(target.settings)
        if pool is None:
            pool = self._primary[target.settings] = self.factory(target.settings)
        return pool

    def shadow(self, target: Target) -> Upstream:
        """The pool shadow calls to `target` use: the same settings, its own connections."""
        pool = self._shadow.get(target.settings)
        if pool is None:
            pool = self._shadow[target.settings] = self.factory(target.settings)
        return pool

    def path(self, target: Target, ref: ModelRef) -> str:
        """The target's path template filled for `ref` (`paths.render_path`), remembered."""
        template = target.path_template or ""
        path = self._paths.get((template, ref))
        if path is None:
            path = paths.render_path(template, ref)
            if len(self._paths) >= MEMO_SIZE:
                self._paths.clear()
            self._paths[(template, ref)] = path
        return path

    async def aclose(self) -> None:
        for pool in (*self._primary.values(), *self._shadow.values()):
            await pool.aclose()
        self._primary.clear()
        self._shadow.clear()
