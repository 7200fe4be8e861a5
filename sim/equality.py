"""Equality by the corpus README's comparison rules: of JSON values and of whole replies. Pure.

The one JSON equality for the simulators, the demo, the tests and the load tests. The
proxy's shadow parity (`proxy.compare`, with configured tolerances) is a different rule.
"""

from __future__ import annotations

import math
from typing import Any, Final

from proxy import jsoncodec
from sim.corpus import Response

# The corpus README: floats are equal within 1e-9 of the larger magnitude.
DEFAULT_REL: Final = 1e-9


def json_equal(a: Any, b: Any, rel: float = DEFAULT_REL) -> bool:
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
    return type(a) is type(b) and bool(a == b)


def media_type(content_type: str | None) -> str | None:
    """`text/plain; charset=utf-8` → `text/plain`, lower-cased; None stays None."""
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower()


def _try_json(body: str | bytes) -> tuple[bool, Any]:
    try:
        return True, jsoncodec.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False, None


def reply_mismatch(
    recorded: Response, status: int, content_type: str | None, body: bytes
) -> str | None:
    """Why a reply does not count as the `recorded` one, or None when it does.

    Status must be equal and the media types too. Then, when the recorded body is JSON:
    an error object is compared by `error_code` (messages embed tracebacks and reprs),
    a success body by `json_equal`. Non-JSON bodies (415 text, HTML pages, `/version`)
    are compared by status and media type only.
    """
    if status != recorded.status:
        return f"status {status}, recorded {recorded.status}"
    if media_type(content_type) != media_type(recorded.content_type):
        return f"type {media_type(content_type)!r}, recorded {media_type(recorded.content_type)!r}"
    recorded_is_json, expected = _try_json(recorded.body)
    if not recorded_is_json:
        return None
    is_json, actual = _try_json(body)
    if not is_json:
        return "body is not JSON"
    if isinstance(expected, dict) and "error_code" in expected and recorded.status >= 400:
        code = actual.get("error_code") if isinstance(actual, dict) else None
        if code != expected["error_code"]:
            return f"error_code {code!r}, recorded {expected['error_code']!r}"
        return None
    if not json_equal(actual, expected):
        return "body differs"
    return None


def assert_legacy_equivalent(
    status: int, content_type: str | None, body: bytes, recorded: Response
) -> None:
    """Assert that a reply is what the corpus accepts for `recorded` (`reply_mismatch`).

    Raises:
        AssertionError: naming the first difference, with the start of the reply.
    """
    why = reply_mismatch(recorded, status, content_type, body)
    if why is not None:
        raise AssertionError(f"{why}; reply {status} {body[:200]!r}")
