"""The live objects one running app owns: config, targets, upstream pools, admission.

Built by the app's lifespan and handed to handlers as lifespan state (Starlette
`docs/lifespan.md`), so nothing here is a module-level global.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from proxy.backends import ModelTargets, Target, build_targets
from proxy.compare import Comparison, Tolerance, Verdict
from proxy.config import ProxyConfig
from proxy.cutover import Cutover
from proxy.errors import Overloaded
from proxy.shadow import Shadow
from proxy.upstream import AiohttpUpstream, Upstream, UpstreamSettings

UpstreamFactory = Callable[[UpstreamSettings], Upstream]


@dataclass
class Runtime:
    config: ProxyConfig
    targets: dict[str, ModelTargets]
    upstream_factory: UpstreamFactory = AiohttpUpstream
    upstreams: dict[UpstreamSettings, Upstream] = field(default_factory=dict)
    in_flight: int = 0
    # Told +1/-1 as requests are admitted and leave (issue 4's in-flight gauge).
    on_in_flight: Callable[[int], None] | None = None
    # Issue 3: the live routing table and the shadow mirror, with pools of their own so a
    # slow shadow backend can never take a connection the primary path needs.
    cutover: Cutover = field(init=False)
    shadow: Shadow = field(init=False)
    shadow_upstreams: dict[UpstreamSettings, Upstream] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cutover = Cutover(self.config)
        self.shadow = Shadow(
            self.config.shadow,
            {name: Tolerance.from_config(m.compare) for name, m in self.config.models.items()},
        )
        self.shadow.on_call.append(self.cutover.observe)
        self.shadow.on_verdict.append(self._parity)

    def _parity(self, model: str, result: Comparison) -> None:
        if result.verdict is not Verdict.SHADOW_ERROR:
            self.cutover.observe_parity(model, result.matched)

    @classmethod
    def build(cls, config: ProxyConfig, factory: UpstreamFactory | None = None) -> Runtime:
        runtime = cls(config, build_targets(config), factory or AiohttpUpstream)
        # Open every pool now so the first request pays no set-up.
        for targets in runtime.targets.values():
            for target in (targets.serverless, targets.legacy):
                if target is not None:
                    runtime.upstream(target)
        return runtime

    def upstream(self, target: Target) -> Upstream:
        """The one pool shared by every model that names the same backend settings."""
        pool = self.upstreams.get(target.settings)
        if pool is None:
            pool = self.upstreams[target.settings] = self.upstream_factory(target.settings)
        return pool

    def shadow_upstream(self, target: Target) -> Upstream:
        """The pool shadow calls use: the same settings, its own connections."""
        pool = self.shadow_upstreams.get(target.settings)
        if pool is None:
            pool = self.shadow_upstreams[target.settings] = self.upstream_factory(target.settings)
        return pool

    async def start(self) -> None:
        """Load the cutover state and start following the store (raises `StateError`)."""
        await self.cutover.start()

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of `limits.max_in_flight` places, or refuse with 503 (§6.5 UO)."""
        if self.in_flight >= self.config.limits.max_in_flight:
            raise Overloaded()
        self.in_flight += 1
        hook = self.on_in_flight
        if hook is not None:
            hook(1)
        try:
            yield
        finally:
            self.in_flight -= 1
            if hook is not None:
                hook(-1)

    async def aclose(self) -> None:
        await self.shadow.aclose()
        await self.cutover.aclose()
        for pool in (*self.upstreams.values(), *self.shadow_upstreams.values()):
            await pool.aclose()
        self.upstreams.clear()
        self.shadow_upstreams.clear()
