"""A transport for feeding `Connection` bytes directly, without a socket."""

from __future__ import annotations

from typing import Any


class FakeTransport:
    """What `Connection` asks of its transport: whether it was aborted, and nothing else."""

    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default
