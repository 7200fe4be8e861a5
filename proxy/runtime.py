"""The live objects one running app owns, and the admission limit on requests in flight.

`app.py` builds a `Runtime` in its lifespan and hands it to the handlers as lifespan state
(Starlette `docs/lifespan.md`), so nothing here is a module-level global and nothing here
builds anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from proxy.admission import ModelGate, build_gates
from proxy.config import ProxyConfig
from proxy.credentials import Credentials
from proxy.cutover import Cutover
from proxy.errors import Overloaded
from proxy.models import ModelRef
from proxy.protocol import paths
from proxy.shadow.runner import Shadow
from proxy.upstream.pools import MEMO_SIZE, Pools


class Admission:
    """Holds one of `limits.max_in_flight` places for a `with` block, or refuses with
    503 (§6.5 UO). Taken once the request's body is read, so a slow upload never holds
    a place. A plain class: a generator context manager costs several times more, and
    this runs on every request."""

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
class Runtime:
    """What the request handlers and the admin API reach: all built by `app.py`."""

    config: ProxyConfig
    pools: Pools
    credentials: Credentials
    cutover: Cutover
    shadow: Shadow
    # Resolved once at start-up (`config.backends.replica_id_of`); the access log, `/readyz`
    # and the store's records of this replica all read it here.
    replica_id: str
    in_flight: int = 0
    # Told +1/-1 as requests are admitted and leave (the in-flight gauge).
    on_in_flight: Callable[[int], None] | None = None
    admission: Admission = field(init=False)
    # Models with their own `max_in_flight`, by name; a model without one has no entry.
    gates: dict[str, ModelGate] = field(init=False)
    _refs: dict[tuple[str, str], ModelRef] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.admission = Admission(self)
        self.gates = build_gates(self.config.models, self.admission)

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
        await self.pools.aclose()
