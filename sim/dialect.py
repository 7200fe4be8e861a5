"""What one imitated scoring server does its own way; the app does the rest. Pure.

`sim.legacy` and `sim.serverless` are the two implementations: each module itself
satisfies `Dialect`, so there is no registry to keep in step with them.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from starlette.responses import Response

SimulatorKind = Literal["legacy", "serverless"]


class Dialect(Protocol):
    """One imitated server: its version, its URLs, how it reads a request and answers."""

    @property
    def KIND(self) -> SimulatorKind:
        """The simulator kind it implements."""

    @property
    def VERSION(self) -> str:
        """What `GET /version` answers."""

    @property
    def REPLAY_SIDES(self) -> tuple[str, ...]:
        """The corpus sides whose recorded answers it replays, tried in order."""

    def is_invocations(self, path: str) -> bool:
        """Whether a path is one of its scoring URLs."""

    def read_rows(self, content_type: str | None, body: bytes) -> list[Any]:
        """A request's Content-Type and body as model rows; raises `Rejected` to refuse."""

    def render(self, predictions: list[float]) -> Response:
        """The predictions as its success answer."""

    def method_not_allowed(self) -> Response:
        """Its answer to a scoring URL asked with a method other than POST."""

    def not_found(self) -> Response:
        """Its answer to a path it does not serve."""
