"""The recorded scoring-protocol corpus (`shared/corpus`), for any test that replays it.

Loads the cases into small frozen types and compares replies by the corpus README's rules:
equal status; success bodies JSON-equal (NaN equals NaN, floats within 1e-9 relative);
JSON errors by `error_code`; anything else by the Content-Type's media type. Read-only:
nothing here writes to the corpus.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The corpus sits beside the project: <root>/../shared/corpus (protocols.md §0).
CORPUS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
CASES_DIR = CORPUS_DIR / "cases"

NEW_SIDES = ("v2", "v3")


@dataclass(frozen=True)
class Request:
    """A recorded request. `headers` holds only what the recorder set (lower-case names)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: str

    @property
    def content_type(self) -> str | None:
        """The Content-Type sent, or None: the recorder sent no header at all."""
        return self.headers.get("content-type")

    @property
    def body_bytes(self) -> bytes:
        return self.body.encode("utf-8")


@dataclass(frozen=True)
class Response:
    """A recorded response: status, `content-type` (and `allow` on 405), body as on the wire."""

    status: int
    headers: Mapping[str, str]
    body: str

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def body_bytes(self) -> bytes:
        return self.body.encode("utf-8")


@dataclass(frozen=True)
class Side:
    """One server's half of a case: what was sent to it and what it answered."""

    server: str
    request: Request
    response: Response


@dataclass(frozen=True)
class Case:
    """One logical case; a side is None when that server has no equivalent request."""

    id: str
    model: str
    description: str
    legacy: Side | None
    v2: Side | None
    v3: Side | None

    def new_sides(self) -> list[tuple[str, Side]]:
        """The recorded 2.x / 3.x sides, as `(name, side)` pairs."""
        sides = (("v2", self.v2), ("v3", self.v3))
        return [(name, side) for name, side in sides if side is not None]


def _side(raw: Mapping[str, Any] | None) -> Side | None:
    if raw is None:
        return None
    request, response = raw["request"], raw["response"]
    return Side(
        server=raw["server"],
        request=Request(
            method=request["method"],
            path=request["path"],
            headers=dict(request["headers"]),
            body=request["body"],
        ),
        response=Response(
            status=response["status"], headers=dict(response["headers"]), body=response["body"]
        ),
    )


@functools.cache
def load_cases() -> tuple[Case, ...]:
    """Every case in `cases/`, sorted by id. Cached: the files are read once per session."""
    paths = sorted(CASES_DIR.glob("*.json"))
    if not paths:
        # A missing corpus must fail loudly: an empty parametrization would pass silently.
        raise FileNotFoundError(
            f"no corpus cases in {CASES_DIR}: the recorded corpus must sit beside the "
            "project root, as ../shared/corpus"
        )
    cases = []
    for path in paths:
        raw = json.loads(path.read_text(encoding="utf-8"))
        cases.append(
            Case(
                id=raw["id"],
                model=raw["model"],
                description=raw["description"],
                legacy=_side(raw.get("legacy")),
                v2=_side(raw.get("v2")),
                v3=_side(raw.get("v3")),
            )
        )
    return tuple(sorted(cases, key=lambda case: case.id))


def get_case(case_id: str) -> Case:
    """The case with this id (e.g. `"iris/pandas-split"`)."""
    for case in load_cases():
        if case.id == case_id:
            return case
    raise KeyError(case_id)


def media_type(content_type: str | None) -> str | None:
    """`text/plain; charset=utf-8` → `text/plain`, lower-cased; None stays None."""
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower()


def parse_json(body: str | bytes) -> Any:
    """Parse a recorded body; bare `NaN` / `Infinity` tokens are accepted, as on the wire.

    Raises:
        ValueError: the body is not JSON.
    """
    return json.loads(body)


def json_equal(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """JSON equality by the corpus rules.

    Objects compare by key set (order ignored) and values; arrays element-wise; numbers
    by value, floats equal when identical, both NaN, or within `rel` of the larger
    magnitude; booleans are not numbers (`true` ≠ `1`).
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if a == b:
            return True
        if math.isnan(a) and math.isnan(b):
            return True
        if math.isinf(a) or math.isinf(b) or math.isnan(a) or math.isnan(b):
            return False
        return abs(a - b) <= rel * max(abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[key], b[key], rel) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y, rel) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _try_json(body: str | bytes) -> tuple[bool, Any]:
    try:
        return True, parse_json(body)
    except ValueError:
        return False, None


def assert_legacy_equivalent(
    status: int, content_type: str | None, body: bytes, recorded: Response
) -> None:
    """Assert that a reply is what the corpus accepts for `recorded` (README "Comparison rules").

    Status must be equal and the media types too. Then, when the recorded body is JSON:
    an error object is compared by `error_code` (messages embed tracebacks and reprs),
    a success body by `json_equal`. Non-JSON bodies (415 text, HTML pages, `/version`)
    are compared by status and media type only.
    """
    assert status == recorded.status, f"status {status} != recorded {recorded.status}"
    assert media_type(content_type) == media_type(recorded.content_type), (
        f"content type {content_type!r} != recorded {recorded.content_type!r}"
    )
    recorded_is_json, expected = _try_json(recorded.body)
    if not recorded_is_json:
        return
    is_json, actual = _try_json(body)
    assert is_json, f"reply is not JSON: {body[:200]!r}"
    if isinstance(expected, dict) and "error_code" in expected and recorded.status >= 400:
        assert isinstance(actual, dict), f"reply is not an error object: {actual!r}"
        assert actual.get("error_code") == expected["error_code"], (
            f"error_code {actual.get('error_code')!r} != recorded {expected['error_code']!r}"
        )
        return
    assert json_equal(actual, expected), f"body {actual!r} != recorded {expected!r}"
