"""The MLflow 1.30.1 ("legacy") scoring server the simulator imitates (protocols.md §2, §5.1).

Reads 1.x requests (pandas-split, pandas-records, CSV, tensors) and refuses them with the
recorded 1.x texts and Flask pages. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any, Final

from starlette.responses import Response

from sim.dialect import SimulatorKind
from sim.replies import HTML, ONLY_UTF8, Rejected, bad_request, json_response, plain
from sim.scoring import (
    E3_PANDAS,
    columns_to_rows,
    csv_rows,
    decode_json,
    parse_content_type,
    split_rows,
    tensor_rows,
)

KIND: Final[SimulatorKind] = "legacy"
VERSION: Final = "1.30.1"
REPLAY_SIDES: Final = ("legacy",)

_INVOCATIONS = re.compile(r"^/model/[^/]+/[^/]+/invocations$")

# Messages quoted from the 1.30.1 server the corpus recorded (protocols.md §6.1).
_E1: Final = "Failed to parse input from JSON. Ensure that input is a valid JSON formatted string."
_E2: Final = (
    "Failed to parse input from JSON. Ensure that input is a valid JSON list or dictionary."
)
_E6B: Final = (
    'Failed to parse data as TF serving input. One of "instances" and "inputs" must be '
    "specified (not both or any other keys)."
)
_E11_PAGE: Final = (
    "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n"
    "<h1>Internal Server Error</h1>\n<p>The server encountered an internal error and was "
    "unable to complete your request. Either the server is overloaded or there is an error "
    "in the application.</p>\n"
)
_E14_PAGE: Final = (
    "<!doctype html>\n<html lang=en>\n<title>405 Method Not Allowed</title>\n"
    "<h1>Method Not Allowed</h1>\n<p>The method is not allowed for the requested URL.</p>\n"
)
_E15_PAGE: Final = (
    "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    "<p>The requested URL was not found on the server. If you entered the URL manually please "
    "check your spelling and try again.</p>\n"
)


def is_invocations(path: str) -> bool:
    """The server's own `/invocations`, or the Databricks legacy scoring URL."""
    return path == "/invocations" or _INVOCATIONS.match(path) is not None


def read_rows(content_type: str | None, body: bytes) -> list[Any]:
    """Read a 1.x request (§2.1-§2.5) into model rows, or refuse it as 1.30.1 would."""
    if content_type is None:
        raise Rejected(plain(500, _E11_PAGE, HTML))
    mime, params = parse_content_type(content_type)
    if params.get("charset", "utf-8").lower() != "utf-8":
        raise Rejected(plain(415, ONLY_UTF8))
    fmt = params.get("format") or None
    if mime == "text/csv" and fmt is None:
        return csv_rows(body)
    if mime != "application/json" or fmt not in (None, "pandas-split", "pandas-records"):
        raise Rejected(
            plain(
                415,
                "This predictor only supports the following content types and formats: "
                "Types: ['text/csv', 'application/json', 'application/json-numpy-split']; "
                f"Formats: ['pandas-records', 'pandas-split']. Got '{content_type}'.",
            )
        )
    if fmt == "pandas-split":
        error = E3_PANDAS.format(orient="split")
        return split_rows(decode_json(body, error), require_data=False, error=error)
    if fmt == "pandas-records":
        error = E3_PANDAS.format(orient="records")
        obj = decode_json(body, error)
        if isinstance(obj, list):
            return obj
        if isinstance(obj, dict):
            return columns_to_rows(obj)
        raise bad_request(error)
    obj = decode_json(body, _E1)
    if isinstance(obj, list):
        return obj
    if not isinstance(obj, dict):
        raise bad_request(_E2)
    if "instances" in obj or "inputs" in obj:
        if len(obj) != 1:
            raise bad_request(_E6B)
        return tensor_rows(next(iter(obj.values())))
    error = E3_PANDAS.format(orient="split")
    return split_rows(obj, require_data=False, error=error)


def render(predictions: list[float]) -> Response:
    """1.x answers the bare predictions (§5.1)."""
    return json_response(predictions)


def method_not_allowed() -> Response:
    return plain(405, _E14_PAGE, HTML, {"allow": "OPTIONS, POST"})


def not_found() -> Response:
    return plain(404, _E15_PAGE, HTML)
