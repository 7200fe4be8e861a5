"""The live objects one running app owns: config, targets, upstream pools, admission.

Built by the app's lifespan and handed to handlers as lifespan state (Starlette
`docs/lifespan.md`), so nothing here is a module-level global.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from proxy.backends import ModelTargets, Target, build_targets
from proxy.compare import Comparison, Verdict
from proxy.config import ProxyConfig
from proxy.cutover import Cutover
from proxy.errors import Overloaded
from proxy.http1 import HttptoolsUpstream
from proxy.models import ModelRef
from proxy.protocol import paths
from proxy.shadow import Shadow, tolerances_of
from proxy.shadowworker import ShadowWorker
from proxy.upstream import AiohttpUpstream, Upstream, UpstreamSettings

UpstreamFactory = Callable[[UpstreamSettings], Upstream]
# `server.upstream_client` → the class that builds each pool.
CLIENTS: dict[str, UpstreamFactory] = {"httptools": HttptoolsUpstream, "aiohttp": AiohttpUpstream}
# Bounds the per-runtime memo tables below: a model without `versions:` accepts any
# numeric version, so the keys are the clients' choice.
MEMO_SIZE = 1024


class Admission:
    """Holds one of `limits.max_in_flight` places for a `with` block, or refuses with
    503 (§6.5 UO). A plain class: a generator context manager costs several times more,
    and this runs on every request."""

    __slots__ = ("runtime",)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def __enter__(self) -> None:
        runtime = self.runtime
        if runtime.in_flight >= runtime.config.limits.max_in_flight:
            raise Overloaded()
        runtime.in_flight += 1
        if runtime.on_in_flight is not None:
            runtime.on_in_flight(1)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runtime = self.runtime
        runtime.in_flight -= 1
        if runtime.on_in_flight is not None:
            runtime.on_in_flight(-1)


@dataclass
class Upstreams:
    """The backend pools and upstream paths of one config: all a scoring call needs to
    reach a backend. The shadow worker process (`proxy.shadowworker`) builds only this."""

    config: ProxyConfig
    targets: dict[str, ModelTargets]
    upstream_factory: UpstreamFactory = HttptoolsUpstream
    upstreams: dict[UpstreamSettings, Upstream] = field(default_factory=dict)
    # Issue 3: shadow calls have pools of their own, so a slow shadow backend can never
    # take a connection the primary path needs.
    shadow_upstreams: dict[UpstreamSettings, Upstream] = field(default_factory=dict)
    # Pure functions of the frozen config, remembered: resolving and rendering a path
    # costs more than the lookup, and the same few models take nearly every request.
    _paths: dict[tuple[str, ModelRef], str] = field(default_factory=dict)

    @classmethod
    def build(cls, config: ProxyConfig, factory: UpstreamFactory | None = None) -> Self:
        if factory is None:
            factory = CLIENTS[config.server.upstream_client]
        built = cls(config, build_targets(config), factory)
        # Open every pool now so the first request pays no set-up.
        for targets in built.targets.values():
            for target in (targets.serverless, targets.legacy):
                if target is not None:
                    built.upstream(target)
        return built

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

    def upstream_path(self, target: Target, ref: ModelRef) -> str:
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
        for pool in (*self.upstreams.values(), *self.shadow_upstreams.values()):
            await pool.aclose()
        self.upstreams.clear()
        self.shadow_upstreams.clear()


@dataclass
class Runtime(Upstreams):
    in_flight: int = 0
    # Told +1/-1 as requests are admitted and leave (issue 4's in-flight gauge).
    on_in_flight: Callable[[int], None] | None = None
    # Issue 3: the live routing table and the shadow mirror.
    cutover: Cutover = field(init=False)
    shadow: Shadow = field(init=False)
    admission: Admission = field(init=False)
    _refs: dict[tuple[str, str], ModelRef] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.admission = Admission(self)
        self.cutover = Cutover(self.config)
        worker = ShadowWorker(self.config) if self.config.shadow.isolation == "process" else None
        self.shadow = Shadow(
            self.config.shadow,
            tolerances_of(self.config),
            worker=worker,
        )
        self.shadow.on_call.append(self.cutover.observe)
        self.shadow.on_verdict.append(self._parity)

    def _parity(self, model: str, result: Comparison) -> None:
        if result.verdict is not Verdict.SHADOW_ERROR:
            self.cutover.observe_parity(model, result.matched)

    def resolve_legacy(self, name: str, segment: str) -> ModelRef:
        """`paths.resolve_legacy` over this config, remembered (raises `UnknownModel`)."""
        ref = self._refs.get((name, segment))
        if ref is None:
            ref = paths.resolve_legacy(self.config.models, name, segment)
            if len(self._refs) >= MEMO_SIZE:
                self._refs.clear()
            self._refs[(name, segment)] = ref
        return ref

    async def start(self) -> None:
        """Load the cutover state and start following the store (raises `StateError`)."""
        await self.cutover.start()

    async def aclose(self) -> None:
        await self.shadow.aclose()
        await self.cutover.aclose()
        await super().aclose()
