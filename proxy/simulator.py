"""Imitation MLflow scoring servers (1.x "legacy" and 2.x "serverless") for tests, demo and load.

An independent peer of the proxy: it reimplements just enough of each wire protocol
(protocols.md §2, §3, §5) and never imports `proxy.protocol`, so a bug there cannot hide
itself by agreeing with the simulator. Answers come from a recorded corpus case when one
matches, else from a deterministic toy model. Fault knobs make it slow, failing or rude.
Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import io
import ipaddress
import math
import random
import re
import socket
import struct
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from proxy import jsoncodec
from proxy.server import CoalescingHttpToolsProtocol

Kind = Literal["legacy", "serverless"]
BrokenMode = Literal["reset", "hang", "garbage"]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORTS: Final[Mapping[str, int]] = {"legacy": 5001, "serverless": 5002}
SERVER_VERSIONS: Final[Mapping[str, str]] = {"legacy": "1.30.1", "serverless": "2.22.5"}

JSON: Final = "application/json"
TEXT: Final = "text/plain; charset=utf-8"
HTML: Final = "text/html; charset=utf-8"

# uvicorn closes the transport, without writing a response, when an ASGI app returns
# anything but None (`run_asgi` in uvicorn/protocols/http/httptools_impl.py and h11_impl.py).
# It is the only way an app can end a request with no HTTP answer at all: an exception or a
# return without a response both become a 500. The string is what uvicorn's log line shows.
_DROPPED: Final = "simulator fault 'drop': connection closed without a response"
_DROP_SCOPE_KEY: Final = "serving_proxy.simulator.drop"
_CONTROL_PREFIX: Final = "/_sim/"
_ALL_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_LEGACY_INVOCATIONS = re.compile(r"^/model/[^/]+/[^/]+/invocations$")

# Messages quoted from the servers the corpus recorded (protocols.md §6.1, §6.2).
_PROTOCOL_CHANGED: Final = (
    "IMPORTANT: The MLflow Model scoring protocol has changed in MLflow version 2.0. If you are "
    "seeing this error, you are likely using an outdated scoring request format. To resolve the "
    "error, either update your request format or adjust your MLflow Model's requirements file to "
    "specify an older version of MLflow (for example, change the 'mlflow' requirement specifier "
    "to 'mlflow==1.30.0'). If you are making a request using the MLflow client (e.g. via "
    "`mlflow.pyfunc.spark_udf()`), upgrade your MLflow client to a version >= 2.0 in order to "
    "use the new request format. For more information about the updated MLflow Model scoring "
    "protocol in MLflow 2.0, see https://mlflow.org/docs/latest/models.html#deploy-mlflow-models."
)
_REQUIRED_INPUT_FORMAT: Final = (
    "The input must be a JSON dictionary with exactly one of the input fields "
    "{'instances', 'dataframe_records', 'dataframe_split', 'inputs'}"
)
_V2_FORMAT_KEYS: Final = ("dataframe_split", "dataframe_records", "instances", "inputs")
_SPLIT_KEYS: Final = frozenset({"columns", "index", "data"})
_ONLY_UTF8: Final = "The scoring server only supports UTF-8"
_E1: Final = "Failed to parse input from JSON. Ensure that input is a valid JSON formatted string."
_E2: Final = (
    "Failed to parse input from JSON. Ensure that input is a valid JSON list or dictionary."
)
_E3: Final = (
    "Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid "
    "JSON-formatted Pandas DataFrame with the `{orient}` orient produced using the "
    "`pandas.DataFrame.to_json(..., orient='{orient}')` method."
)
_E4: Final = (
    "Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid "
    "CSV-formatted Pandas DataFrame produced using the `pandas.DataFrame.to_csv()` method."
)
_E6B: Final = (
    'Failed to parse data as TF serving input. One of "instances" and "inputs" must be '
    "specified (not both or any other keys)."
)
_E6_LENGTHS: Final = (
    "Failed to parse data as TF serving input. The length of values for each input/column "
    "name are not the same"
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
# What a 2.x server (or the Databricks front end) says for a status it chose (§6.2, §6.3).
_ERROR_CODES: Final[Mapping[int, str]] = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    429: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_CSV_MISSING: Final = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"})
_MALFORMED_BODY: Final = b'{"predictions": [0.0, 1.0,'


@dataclass(frozen=True, slots=True)
class Faults:
    """How the simulator misbehaves; every field off by default.

    Attributes:
        delay_ms: added before every answer.
        jitter_ms: up to this much more, uniform, from the seeded RNG.
        status: answer every request with this status and an MLflow-2-style JSON error.
        fail_rate: this share of requests (seeded) is answered 500.
        malformed: answer 200 with a body that is not JSON.
        drop: close the connection without any HTTP response (real sockets only: it relies
            on uvicorn closing the transport; in-process transports raise instead).
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    status: int | None = None
    fail_rate: float = 0.0
    malformed: bool = False
    drop: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delay_ms) and self.delay_ms >= 0):
            raise ValueError("delay_ms must be a finite number >= 0")
        if not (math.isfinite(self.jitter_ms) and self.jitter_ms >= 0):
            raise ValueError("jitter_ms must be a finite number >= 0")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code (100-599) or null")

    @classmethod
    def from_json(cls, data: Any) -> Faults:
        """Validate a parsed `PUT /_sim/faults` body; absent fields take their defaults.

        Raises:
            ValueError: naming the first bad field.
        """
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(unknown)}")
        for name in ("delay_ms", "jitter_ms", "fail_rate"):
            value = data.get(name, 0.0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
        for name in ("malformed", "drop"):
            if not isinstance(data.get(name, False), bool):
                raise ValueError(f"{name} must be true or false")
        status = data.get("status")
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
            raise ValueError("status must be an integer or null")
        return cls(
            delay_ms=float(data.get("delay_ms", 0.0)),
            jitter_ms=float(data.get("jitter_ms", 0.0)),
            status=status,
            fail_rate=float(data.get("fail_rate", 0.0)),
            malformed=data.get("malformed", False),
            drop=data.get("drop", False),
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class Stats:
    """What the simulator received, so tests can assert what the proxy sent upstream."""

    total: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    last_request: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "by_path": self.by_path, "last_request": self.last_request}


@dataclass(frozen=True, slots=True)
class RecordedReply:
    """One recorded response of the corpus, replayed verbatim."""

    case_id: str
    model: str
    path: str
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class _Rejected(Exception):
    """A request the imitated server refuses; carries the answer it would give."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _json_response(obj: Any, status: int = 200) -> Response:
    # MLflow writes every body with stdlib json.dump defaults (§5.1, §5.2, §6).
    return Response(jsoncodec.dumps_legacy(obj), status_code=status, media_type=JSON)


def _mlflow_error(status: int, error_code: str, message: str) -> Response:
    return _json_response({"error_code": error_code, "message": message}, status)


def _bad_request(message: str) -> _Rejected:
    return _Rejected(_mlflow_error(400, "BAD_REQUEST", message))


def _plain(
    status: int, text: str, content_type: str = TEXT, extra: Mapping[str, str] | None = None
) -> Response:
    headers = {"content-type": content_type, **(extra or {})}
    return Response(text.encode(), status_code=status, headers=headers)


# --- the toy model ---------------------------------------------------------------------------


def _numbers(value: Any) -> Iterator[float]:
    # bool is an int to Python but not a number to the toy model; null is a missing number,
    # which pandas reads as NaN (§4.2), so it propagates.
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        try:
            yield float(value)
        except OverflowError:
            yield math.copysign(math.inf, value)
    elif isinstance(value, float):
        yield value
    elif value is None:
        yield math.nan
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)


def predict(rows: list[Any]) -> list[float]:
    """The toy model: per row (or tensor instance), the sum of its numbers, as a float.

    Strings and booleans are ignored, null and NaN propagate as NaN, nested lists and
    objects are flattened, so both protocols give the same answer for the same data.
    """
    return [sum(_numbers(row), 0.0) for row in rows]


def _columns_to_rows(columns: dict[str, Any]) -> list[Any]:
    values = list(columns.values())
    if not all(isinstance(v, list) for v in values):
        return [columns]
    lengths = {len(v) for v in values}
    if len(lengths) > 1:
        raise _bad_request(_E6_LENGTHS)
    count = lengths.pop() if lengths else 0
    return [{name: column[i] for name, column in columns.items()} for i in range(count)]


def _tensor_rows(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return _columns_to_rows(value)
    return [value]


def _split_rows(obj: Any, *, require_data: bool, error: str) -> list[Any]:
    if not isinstance(obj, dict) or not set(obj) <= _SPLIT_KEYS:
        raise _bad_request(error)
    if "data" not in obj:
        if require_data:
            raise _bad_request(error)
        return []  # 1.30.1 reads columns without data as a zero-row frame (§4.1)
    data = obj["data"]
    if not isinstance(data, list):
        raise _bad_request(error)
    return data


def _csv_cell(cell: str) -> Any:
    if cell in _CSV_MISSING:
        return None
    try:
        return float(cell)
    except ValueError:
        return cell


def _csv_rows(body: bytes) -> list[Any]:
    """Read CSV as `pd.read_csv` defaults do (§2.4): a header line, then one row per line."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad_request(_E4) from exc
    lines = [row for row in csv.reader(io.StringIO(text)) if row]
    if not lines:
        raise _bad_request(f"{_E4} Error: 'No columns to parse from file'")
    return [[_csv_cell(cell) for cell in row] for row in lines[1:]]


def _parse_content_type(raw: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type as MLflow does: `;` parts, `key=value`, case kept (§2.1)."""
    parts = [part.strip() for part in raw.split(";")]
    params: dict[str, str] = {}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        params[key] = value
    return parts[0], params


def _decode_json(body: bytes, error: str) -> Any:
    try:
        return jsoncodec.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad_request(error) from exc


def _legacy_rows(content_type: str | None, body: bytes) -> list[Any]:
    """Read a 1.x request (§2.1-§2.5) into model rows, or refuse it as 1.30.1 would."""
    if content_type is None:
        raise _Rejected(_plain(500, _E11_PAGE, HTML))
    mime, params = _parse_content_type(content_type)
    if params.get("charset", "utf-8").lower() != "utf-8":
        raise _Rejected(_plain(415, _ONLY_UTF8))
    fmt = params.get("format") or None
    if mime == "text/csv" and fmt is None:
        return _csv_rows(body)
    if mime != "application/json" or fmt not in (None, "pandas-split", "pandas-records"):
        raise _Rejected(
            _plain(
                415,
                "This predictor only supports the following content types and formats: "
                "Types: ['text/csv', 'application/json', 'application/json-numpy-split']; "
                f"Formats: ['pandas-records', 'pandas-split']. Got '{content_type}'.",
            )
        )
    if fmt == "pandas-split":
        error = _E3.format(orient="split")
        return _split_rows(_decode_json(body, error), require_data=False, error=error)
    if fmt == "pandas-records":
        error = _E3.format(orient="records")
        obj = _decode_json(body, error)
        if isinstance(obj, list):
            return obj
        if isinstance(obj, dict):
            return _columns_to_rows(obj)
        raise _bad_request(error)
    obj = _decode_json(body, _E1)
    if isinstance(obj, list):
        return obj
    if not isinstance(obj, dict):
        raise _bad_request(_E2)
    if "instances" in obj or "inputs" in obj:
        if len(obj) != 1:
            raise _bad_request(_E6B)
        return _tensor_rows(next(iter(obj.values())))
    error = _E3.format(orient="split")
    return _split_rows(obj, require_data=False, error=error)


def _serverless_rows(content_type: str | None, body: bytes) -> list[Any]:
    """Read a 2.x request (§3.1-§3.3) into model rows, or refuse it as 2.22.5 would."""
    if content_type is None:
        raise _Rejected(_plain(500, "Internal Server Error"))
    mime, params = _parse_content_type(content_type)
    if params.get("charset", "utf-8").lower() != "utf-8":
        raise _Rejected(_plain(415, _ONLY_UTF8))
    unknown = [key for key in params if key != "charset"]
    if unknown:
        raise _Rejected(
            _plain(
                415,
                f"Unrecognized content type parameters: {', '.join(unknown)}. " + _PROTOCOL_CHANGED,
            )
        )
    if mime == "text/csv":
        return _csv_rows(body)
    if mime != "application/json":
        raise _Rejected(
            _plain(
                415,
                "This predictor only supports the following content types: "
                f"Types: ['text/csv', 'application/json']. Got '{content_type}'.",
            )
        )
    try:
        obj = jsoncodec.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad_request(
            f"Invalid input. Ensure that input is a valid JSON formatted string. Error: '{exc!r}'"
        ) from exc
    if isinstance(obj, list):
        raise _bad_request(f"Invalid input. {_REQUIRED_INPUT_FORMAT}. Received a list.")
    if not isinstance(obj, dict):
        raise _bad_request(
            f"Invalid input. {_REQUIRED_INPUT_FORMAT}. Received unexpected input type '{type(obj)}."
        )
    keys = [key for key in _V2_FORMAT_KEYS if key in obj]
    if len(keys) != 1:
        raise _bad_request(
            f"{_REQUIRED_INPUT_FORMAT}. Received dictionary with input fields: {keys}. "
            + _PROTOCOL_CHANGED
        )
    if not isinstance(obj.get("params", {}), dict):
        raise _Rejected(
            _mlflow_error(400, "INVALID_PARAMETER_VALUE", "params must be a JSON object")
        )
    key = keys[0]
    value = obj[key]
    if key == "dataframe_split":
        return _split_rows(
            value,
            require_data=True,
            error="Dataframe split format must have 'data' field and optionally 'columns' "
            f"and 'index' fields. Got {value}.'",
        )
    if key == "dataframe_records":
        if not isinstance(value, list):
            raise _bad_request(
                "Dataframe records format must be a list of records. Got dictionary."
            )
        return value
    return _tensor_rows(value)


# --- corpus replay ---------------------------------------------------------------------------


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
    mime, params = _parse_content_type(raw)
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
    """

    def __init__(self, corpus: Path, sides: tuple[str, ...]) -> None:
        cases_dir = corpus / "cases"
        if not cases_dir.is_dir():
            raise ValueError(f"{corpus}: no cases/ directory (expected the corpus root)")
        self._index: list[dict[Any, list[RecordedReply]]] = [{} for _ in sides]
        for path in sorted(cases_dir.glob("*.json")):
            case = jsoncodec.loads(path.read_bytes())
            for index, side in zip(self._index, sides, strict=True):
                if side not in case:
                    continue
                request = case[side]["request"]
                response = case[side]["response"]
                key = (
                    request["method"].upper(),
                    _content_type_key(request["headers"].get("content-type")),
                    _body_key(request["body"].encode()),
                )
                reply = RecordedReply(
                    case_id=case["id"],
                    model=case["model"],
                    path=request["path"],
                    status=response["status"],
                    headers=tuple(response["headers"].items()),
                    body=response["body"].encode(),
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


# --- the app ---------------------------------------------------------------------------------


class _NoResponse(Response):
    """Sends nothing: the request is ended by `SimulatorApp.__call__` instead."""

    def __init__(self) -> None:
        super().__init__(b"")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_DROP_SCOPE_KEY] = True


class SimulatorApp(Starlette):
    """Starlette, plus the one ASGI move Starlette has no word for: hanging up (see _DROPPED)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)
        if scope.get(_DROP_SCOPE_KEY):
            return _DROPPED  # type: ignore[return-value]


class Simulator:
    """The state behind one simulator app: faults, statistics and the answer logic.

    Reach it in-process as `app.state.simulator` (e.g. to set `faults` directly).
    """

    def __init__(self, kind: Kind, replay: Replay | None, faults: Faults, seed: int) -> None:
        self.kind: Kind = kind
        self.replay = replay
        self.faults = faults
        self.stats = Stats()
        # Two streams, so changing the jitter does not move which requests fail.
        self._jitter_rng = random.Random(f"{seed}:jitter")
        self._fail_rng = random.Random(f"{seed}:fail")

    def _record(self, request: Request, body: bytes, delay_ms: float) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in request.headers.raw:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        path = request.url.path
        self.stats.total += 1
        self.stats.by_path[path] = self.stats.by_path.get(path, 0) + 1
        self.stats.last_request = {
            "method": request.method,
            "path": path,
            "query": request.url.query,
            "headers": headers,
            "body": body.decode("utf-8", errors="replace"),
            # the delay this request was given, so tests can check the jitter draws untimed
            "delay_ms": delay_ms,
        }

    def _is_invocations(self, path: str) -> bool:
        if self.kind == "legacy":
            return path == "/invocations" or _LEGACY_INVOCATIONS.match(path) is not None
        return path.endswith("/invocations")

    async def handle(self, request: Request) -> Response:
        """Every request outside /_sim/: faults first, then the corpus, then the toy model."""
        path = request.url.path
        if path.startswith(_CONTROL_PREFIX):
            return _json_response({"error": f"no simulator control at {path}"}, 404)
        body = await request.body()
        faults = self.faults
        delay_ms = faults.delay_ms
        if faults.jitter_ms:
            delay_ms += self._jitter_rng.uniform(0.0, faults.jitter_ms)
        self._record(request, body, delay_ms)
        if delay_ms:
            await anyio.sleep(delay_ms / 1000)
        if faults.drop:
            return _NoResponse()
        if faults.status is not None:
            code = _ERROR_CODES.get(
                faults.status, "INTERNAL_ERROR" if faults.status >= 500 else "BAD_REQUEST"
            )
            return _mlflow_error(faults.status, code, f"simulated fault: status {faults.status}")
        if faults.fail_rate and self._fail_rng.random() < faults.fail_rate:
            return _mlflow_error(500, "INTERNAL_ERROR", "simulated fault: fail_rate")
        if faults.malformed:
            return Response(_MALFORMED_BODY, media_type=JSON)
        content_type = request.headers.get("content-type")
        if self.replay is not None:
            recorded = self.replay.find(request.method, path, content_type, body)
            if recorded is not None:
                return Response(
                    recorded.body, status_code=recorded.status, headers=dict(recorded.headers)
                )
        return self._answer(request.method, path, content_type, body)

    def _answer(self, method: str, path: str, content_type: str | None, body: bytes) -> Response:
        legacy = self.kind == "legacy"
        if self._is_invocations(path):
            if method != "POST":
                if legacy:
                    return _plain(405, _E14_PAGE, HTML, {"allow": "OPTIONS, POST"})
                return Response(
                    b'{"detail":"Method Not Allowed"}',
                    status_code=405,
                    media_type=JSON,
                    headers={"allow": "POST"},
                )
            try:
                rows = (_legacy_rows if legacy else _serverless_rows)(content_type, body)
            except _Rejected as rejected:
                return rejected.response
            predictions = predict(rows)
            return _json_response(predictions if legacy else {"predictions": predictions})
        if method in ("GET", "HEAD") and path in ("/ping", "/health"):
            return Response(b"\n", media_type=JSON)
        if method in ("GET", "HEAD") and path == "/version":
            return Response(SERVER_VERSIONS[self.kind].encode(), media_type=JSON)
        if legacy:
            return _plain(404, _E15_PAGE, HTML)
        return Response(b'{"detail":"Not Found"}', status_code=404, media_type=JSON)

    async def get_faults(self, request: Request) -> Response:
        return _json_response(self.faults.to_json())

    async def put_faults(self, request: Request) -> Response:
        try:
            faults = Faults.from_json(jsoncodec.loads(await request.body()))
        except ValueError as exc:
            return _mlflow_error(400, "BAD_REQUEST", f"invalid faults: {exc}")
        self.faults = faults  # validated in full before the swap: never half-applied
        return _json_response(faults.to_json())

    async def get_stats(self, request: Request) -> Response:
        return Response(jsoncodec.dumps(self.stats.to_json()), media_type=JSON)

    async def reset(self, request: Request) -> Response:
        self.stats = Stats()
        return Response(status_code=204)


def create_simulator_app(
    kind: Kind,
    *,
    corpus: Path | None = None,
    faults: Faults | None = None,
    seed: int = 0,
) -> Starlette:
    """An app that answers like an MLflow 1.30.1 (`legacy`) or 2.22.5 (`serverless`) server.

    Args:
        kind: which protocol to speak. `legacy` serves `POST /invocations` and
            `/model/<name>/<version>/invocations` with bare predictions (§5.1);
            `serverless` serves `POST` on any path ending in `/invocations` with
            `{"predictions": ...}` (§5.2).
        corpus: the corpus root (holding `cases/`); when given, requests equal to a recorded
            one (the `legacy` side, or `v2` then `v3`) get the recorded answer verbatim.
        faults: initial fault knobs; change them at run time with `PUT /_sim/faults`.
        seed: seeds the jitter and fail-rate draws.

    Control endpoints (not counted in the statistics): `GET`/`PUT /_sim/faults`,
    `GET /_sim/stats`, `POST /_sim/reset`.
    """
    if kind not in get_args(Kind):
        raise ValueError(f"kind must be 'legacy' or 'serverless', not {kind!r}")
    sides = ("legacy",) if kind == "legacy" else ("v2", "v3")
    replay = None if corpus is None else Replay(corpus, sides)
    simulator = Simulator(kind, replay, faults or Faults(), seed)
    app = SimulatorApp(
        routes=[
            Route("/_sim/faults", simulator.get_faults, methods=["GET"]),
            Route("/_sim/faults", simulator.put_faults, methods=["PUT"]),
            Route("/_sim/stats", simulator.get_stats, methods=["GET"]),
            Route("/_sim/reset", simulator.reset, methods=["POST"]),
            Route("/{path:path}", simulator.handle, methods=list(_ALL_METHODS)),
        ]
    )
    app.state.simulator = simulator
    return app


# --- a server no ASGI app can imitate --------------------------------------------------------


_GARBAGE: Final = b"SIMULATOR GARBAGE \x00\xff this is not HTTP\r\n\r\n"
_MAX_HEAD_BYTES: Final = 64 * 1024


@contextlib.asynccontextmanager
async def serve_broken(mode: BrokenMode, *, host: str = DEFAULT_HOST) -> AsyncIterator[str]:
    """Run a TCP server that breaks HTTP in ways an app under uvicorn cannot; yield its URL.

    Each connection's request head is read first, so the client has sent its request and is
    waiting for an answer when the server:

    - `reset`: closes with SO_LINGER 0, so the client sees a TCP RST (connection reset);
    - `hang`: never answers, until the client gives up or the server stops (timeouts);
    - `garbage`: writes bytes that are not an HTTP response, then closes (protocol error).

    Runs on the caller's event loop; open connections are aborted on exit.
    """
    if mode not in get_args(BrokenMode):
        raise ValueError(f"mode must be one of {get_args(BrokenMode)}, not {mode!r}")
    _check_loopback(host)
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                await reader.readuntil(b"\r\n\r\n")
            if mode == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            elif mode == "garbage":
                writer.write(_GARBAGE)
                await writer.drain()
                writer.close()
            else:
                while await reader.read(_MAX_HEAD_BYTES):
                    pass
                writer.close()
        except ConnectionError:
            writer.transport.abort()
        finally:
            writers.discard(writer)

    server = await asyncio.start_server(handle, host, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.close()
        for writer in list(writers):
            writer.transport.abort()
        await server.wait_closed()


# --- command line ----------------------------------------------------------------------------


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the simulator listens on loopback only, not {host!r}")


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `simulate` command's flags to a parser."""
    parser.add_argument("--kind", choices=get_args(Kind), default="serverless")
    parser.add_argument("--host", default=DEFAULT_HOST, help="a loopback address")
    parser.add_argument(
        "--port", type=int, default=None, help="default: 5001 legacy, 5002 serverless"
    )
    parser.add_argument("--corpus", type=Path, default=None, help="replay this corpus root")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)


def run_simulate(args: argparse.Namespace) -> int:
    """Serve a simulator under uvicorn until stopped; the exit status of the command."""
    kind: Kind = args.kind
    try:
        _check_loopback(args.host)
        faults = Faults(delay_ms=args.delay_ms, jitter_ms=args.jitter_ms, fail_rate=args.fail_rate)
        app = create_simulator_app(kind, corpus=args.corpus, faults=faults, seed=args.seed)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    port = DEFAULT_PORTS[kind] if args.port is None else args.port
    config = uvicorn.Config(
        app,
        host=args.host,
        port=port,
        loop="uvloop",
        # One write per reply, as the proxy serves: the simulator stands in for a remote
        # endpoint, so the less of the benchmarks' shared CPU it takes the better.
        http=CoalescingHttpToolsProtocol,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind
        return exc.code if isinstance(exc.code, int) else 1
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m proxy.simulator", description=__doc__)
    add_simulate_arguments(_parser)
    sys.exit(run_simulate(_parser.parse_args()))
