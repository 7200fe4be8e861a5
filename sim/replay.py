"""Recorded corpus answers, found by what a request means rather than by its bytes. Pure.

Reads the corpus through `sim.corpus` once, at construction; no I/O afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from proxy import jsoncodec
from sim.corpus import load_cases
from sim.scoring import parse_content_type


@dataclass(frozen=True, slots=True)
class RecordedReply:
    """One recorded response of the corpus, replayed verbatim."""

    case_id: str
    model: str
    path: str
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class _NaN:
    """NaN as a hashable value equal only to itself, so recorded NaN matches received NaN."""

    def __repr__(self) -> str:
        return "NaN"


_NAN_KEY: Final = _NaN()


def _canonical(value: Any) -> Any:
    """A hashable form of parsed JSON: equal for equal values, object key order ignored."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, float) and value != value:
        return _NAN_KEY
    if isinstance(value, list):
        return ("[]", tuple(_canonical(item) for item in value))
    if isinstance(value, dict):
        return ("{}", tuple(sorted((k, _canonical(v)) for k, v in value.items())))
    return value


def _content_type_key(raw: str | None) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    if raw is None:
        return None
    mime, params = parse_content_type(raw)
    # charset=utf-8 is what no charset means; a proxy may add or drop it (§4.2).
    kept = tuple(
        sorted(
            (k.lower(), v)
            for k, v in params.items()
            if not (k.lower() == "charset" and v.lower() == "utf-8")
        )
    )
    return mime.lower(), kept


def _body_key(body: bytes) -> Any:
    try:
        return ("json", _canonical(jsoncodec.loads(body)))
    except (ValueError, UnicodeDecodeError):
        return ("raw", body)


class Replay:
    """Recorded corpus answers, looked up by method, Content-Type and parsed body.

    Paths are left out of the match, because the proxy posts to whatever path its config
    names, except where they are the whole request (`GET /ping`, `/version`, an unknown
    path). The same request was recorded for several models with different answers (iris
    and frame share their inputs), so a model name that is a segment of the request path
    picks among them; otherwise the first case in file order answers.

    Raises:
        CorpusError: `corpus` is not a corpus root.
    """

    def __init__(self, corpus: Path, sides: tuple[str, ...]) -> None:
        self._index: list[dict[Any, list[RecordedReply]]] = [{} for _ in sides]
        for case in load_cases(corpus):
            for index, name in zip(self._index, sides, strict=True):
                side = case.side(name)
                if side is None:
                    continue
                request, response = side.request, side.response
                key = (
                    request.method.upper(),
                    _content_type_key(request.content_type),
                    _body_key(request.body_bytes),
                )
                reply = RecordedReply(
                    case_id=case.id,
                    model=case.model,
                    path=request.path,
                    status=response.status,
                    headers=tuple(response.headers.items()),
                    body=response.body_bytes,
                )
                index.setdefault(key, []).append(reply)

    def find(
        self, method: str, path: str, content_type: str | None, body: bytes
    ) -> RecordedReply | None:
        """The recorded answer to this request, trying each side in order, or None."""
        key = (method.upper(), _content_type_key(content_type), _body_key(body))
        segments = set(path.split("/"))
        for index in self._index:
            candidates = [
                reply
                for reply in index.get(key, ())
                if reply.path == path
                or (reply.path.endswith("/invocations") and path.endswith("/invocations"))
            ]
            if candidates:
                for reply in candidates:
                    if reply.model in segments:
                        return reply
                return candidates[0]
        return None
