"""The one count of shadow verdicts: per model, since this process started, with the last
mismatches kept for the admin API. The reports, metrics and gates read the same verdicts
(`Shadow`'s listeners) and fold them with `compare.parity_class`.

Memory only: no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from proxy.compare import Answer, Comparison, Verdict
from proxy.models import Backend

# Bodies kept with a mismatch when `keep_payloads` is on, cut to this many bytes.
MAX_PAYLOAD_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A mismatch as the admin API lists it: where the answers first differ, and how."""

    at: float
    request_id: str
    verdict: str
    path: str | None
    primary_backend: str
    primary: Any
    shadow: Any
    detail: str | None
    request: str | None = None
    primary_body: str | None = None
    shadow_body: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "at": self.at,
            "request_id": self.request_id,
            "verdict": self.verdict,
            "path": self.path,
            "primary_backend": self.primary_backend,
            "primary": self.primary,
            "shadow": self.shadow,
            "detail": self.detail,
        }
        if self.request is not None:
            out |= {
                "request": self.request,
                "primary_body": self.primary_body,
                "shadow_body": self.shadow_body,
            }
        return out


@dataclass(slots=True)
class ParityCounts:
    """One model's shadow results since this process started."""

    match: int = 0
    shape_mismatch: int = 0
    value_mismatch: int = 0
    status_mismatch: int = 0
    shadow_error: int = 0
    dropped: int = 0

    @property
    def compared(self) -> int:
        return self.match + self.shape_mismatch + self.value_mismatch + self.status_mismatch

    @property
    def rate(self) -> float | None:
        """Matches over compared answers (shadow errors and drops are not answers)."""
        return self.match / self.compared if self.compared else None

    def to_json(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "shape_mismatch": self.shape_mismatch,
            "value_mismatch": self.value_mismatch,
            "status_mismatch": self.status_mismatch,
            "shadow_error": self.shadow_error,
            "dropped": self.dropped,
            "compared": self.compared,
            "rate": self.rate,
        }


def _cut(data: bytes) -> str:
    return data[:MAX_PAYLOAD_BYTES].decode("utf-8", errors="replace")


@dataclass
class _Book:
    counts: ParityCounts = field(default_factory=ParityCounts)
    mismatches: deque[Mismatch] = field(default_factory=deque)


class Tally:
    """Per-model counts and the last `keep` mismatches of each model.

    Args:
        keep: how many mismatches to keep per model (0: none).
        clock: wall time for the mismatch records.
    """

    def __init__(self, keep: int, clock: Callable[[], float]) -> None:
        self.keep = keep
        self.clock = clock
        self._books: dict[str, _Book] = {}

    def _book(self, model: str) -> _Book:
        book = self._books.get(model)
        if book is None:
            book = self._books[model] = _Book(mismatches=deque(maxlen=self.keep))
        return book

    def count_dropped(self, model: str) -> None:
        self._book(model).counts.dropped += 1

    def count(
        self,
        model: str,
        request_id: str,
        primary: Backend,
        result: Comparison,
        answers: tuple[Answer, Answer] | None,
        payload: bytes | None,
    ) -> Mismatch | None:
        """Count one verdict; keep a mismatch, with the bodies cut when `payload` is given
        (the config allows keeping payloads). Returns the mismatch kept, if any."""
        book = self._book(model)
        counts = book.counts
        verdict = str(result.verdict)
        setattr(counts, verdict, getattr(counts, verdict) + 1)
        if result.verdict is Verdict.MATCH or book.mismatches.maxlen == 0:
            return None
        mismatch = Mismatch(
            at=self.clock(),
            request_id=request_id,
            verdict=verdict,
            path=result.path,
            primary_backend=str(primary),
            primary=result.primary,
            shadow=result.shadow,
            detail=result.detail,
        )
        if payload is not None:
            mismatch = replace(
                mismatch,
                request=_cut(payload),
                primary_body=None if answers is None else _cut(answers[0].body),
                shadow_body=None if answers is None else _cut(answers[1].body),
            )
        book.mismatches.append(mismatch)
        return mismatch

    def parity(self, model: str) -> ParityCounts:
        """A copy of one model's counts since this process started."""
        return replace(self._book(model).counts)

    def mismatches(self, model: str) -> list[Mismatch]:
        """The last `keep` mismatches of one model, oldest first."""
        return list(self._book(model).mismatches)
