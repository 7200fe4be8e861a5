"""The proxy's local replies: every answer the proxy makes itself instead of an upstream.

Pure: no I/O, no logging. Each error knows its status, its Envoy-style response flag
and how it reads in the client's protocol; `app.py` renders them in one place.

    ProxyError
    ├── BadRequest             400  BR   §6.1 E1–E6, legacy JSON with stack_trace
    │   └── LimitExceeded      400  BRL  §6.5 over limits.max_columns / max_cells / max_depth
    ├── UnsupportedMediaType   415  UMT  §6.1 E9/E10, text/plain
    ├── MissingContentType     500  NCT  §6.1 E11, Werkzeug HTML page
    ├── MethodNotAllowed       405  MNA  §6.1 E14, Werkzeug HTML page + Allow
    ├── NoRoute                404  NRT  §6.1 E15, Werkzeug HTML page
    ├── UnknownModel           404  NR   §6.5, legacy JSON
    ├── UnknownEndpoint        404  NR   §1.5 step 3, new-protocol JSON
    ├── PayloadTooLarge        413  PTL  §6.5
    ├── HeadTooLarge           431  HTL  §6.5, the request line alone: 414
    ├── BodyTimeout            408  BT   §6.5, the body did not arrive in time
    ├── UpstreamConnectError   503  UF   §6.5
    ├── UpstreamTimeout        504  UT   §6.5
    ├── UpstreamProtocolError  502  UPE  §6.5
    ├── Overloaded             503  UO   §6.5
    ├── ClientUnauthorized     401  UA   client_auth refused the client, legacy JSON
    ├── IdentityUnavailable    503  IU   client_auth could not check the client now
    ├── ClientClosed           499  DC   the client left before its body arrived
    ├── InternalError          500  BUG  §6.5 (a bug: never a client's mistake)
    └── AdminError             4xx  ADM  admin API and dashboard: {"error", "message"} JSON
"""

from __future__ import annotations

from typing import Protocol

from proxy import jsoncodec
from proxy.models import Reply

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"

# §6.5 BadRequest: the traceback of 1.30.1 cannot be reproduced (§8.2); the key stays.
PROXY_STACK_TRACE = "serving-proxy: request rejected before forwarding\n"

# §6.1 message texts, verbatim.
E1_MALFORMED_JSON = (
    "Failed to parse input from JSON. Ensure that input is a valid JSON formatted string."
)
E2_NOT_LIST_OR_DICT = (
    "Failed to parse input from JSON. Ensure that input is a valid JSON list or dictionary."
)
E3_PANDAS = (
    "Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid "
    "JSON-formatted Pandas DataFrame with the `{orient}` orient produced using the "
    "`pandas.DataFrame.to_json(..., orient='{orient}')` method."
)
E4_CSV = (
    "Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid "
    "CSV-formatted Pandas DataFrame produced using the `pandas.DataFrame.to_csv()` method."
)
E5_NUMPY = (
    "Failed to parse input as a Numpy. Ensure that the input is a valid JSON-formatted "
    "Pandas DataFrame with the split orient produced using the "
    "`pandas.DataFrame.to_json(..., orient='split')` method."
)
E6A_SIGNATURE_NAME = (
    'Failed to parse data as TF serving input. "signature_name" is currently not supported.'
)
E6B_KEYS = (
    'Failed to parse data as TF serving input. One of "instances" and "inputs" must be '
    "specified (not both or any other keys)."
)
E6C_TF_PARSE = (
    "Failed to parse data as TF serving input. Ensure that the input is a valid "
    "JSON-formatted string that conforms to the request body for TF serving's Predict API "
    "as documented at https://www.tensorflow.org/tfx/serving/api_rest#request_format_2"
)
E6D_LENGTHS = (
    "Failed to parse data as TF serving input. The length of values for each input/column "
    "name are not the same"
)
E8_MODEL_ERROR = (
    "Encountered an unexpected error while evaluating the model. Verify that the serialized "
    "input Dataframe is compatible with the model for inference."
)
E9_CHARSET = "The scoring server only supports UTF-8"
E10_CONTENT_TYPE = (
    "This predictor only supports the following content types and formats: Types: "
    "['text/csv', 'application/json', 'application/json-numpy-split']; "
    "Formats: ['pandas-records', 'pandas-split']. Got '{content_type}'."
)
E11_PAGE = (
    "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n"
    "<h1>Internal Server Error</h1>\n<p>The server encountered an internal error and was "
    "unable to complete your request. Either the server is overloaded or there is an error "
    "in the application.</p>\n"
)
E14_PAGE = (
    "<!doctype html>\n<html lang=en>\n<title>405 Method Not Allowed</title>\n"
    "<h1>Method Not Allowed</h1>\n<p>The method is not allowed for the requested URL.</p>\n"
)
E15_PAGE = (
    "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    "<p>The requested URL was not found on the server. If you entered the URL manually "
    "please check your spelling and try again.</p>\n"
)


def mlflow_error_body(error_code: str, message: str, stack_trace: str | None = None) -> bytes:
    """An MLflow JSON error body, key order and separators as `json.dumps` (§6)."""
    obj: dict[str, str] = {"error_code": error_code, "message": message}
    if stack_trace is not None:
        obj["stack_trace"] = stack_trace
    return jsoncodec.dumps_legacy(obj)


class ProxyError(Exception):
    """A request the proxy answers itself. Subclasses set status, flag and the reply."""

    status_code: int = 500
    flag: str = "BUG"
    error_code: str = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_reply(self) -> Reply:
        """The reply a legacy client gets (§6.5); the shared shape also serves §1.5."""
        return Reply(self.status_code, mlflow_error_body(self.error_code, self.message))


class BadRequest(ProxyError):
    """§4 validation failed: 400 `BAD_REQUEST` with the exact 1.x text (§6.1 E1–E6)."""

    status_code = 400
    flag = "BR"
    error_code = "BAD_REQUEST"

    def __init__(self, message: str, *, stack_trace: bool = True) -> None:
        super().__init__(message)
        self.stack_trace = stack_trace

    def to_reply(self) -> Reply:
        trace = PROXY_STACK_TRACE if self.stack_trace else None
        return Reply(self.status_code, mlflow_error_body(self.error_code, self.message, trace))


class LimitExceeded(BadRequest):
    """A body over one of the work limits (`limits.max_columns`, `max_cells`, `max_depth`).

    1.30.1 had no such limits (pandas took whatever a body described); the proxy refuses
    such a body before translating it, in the shape of the other 1.x 400s (§6.5) with its
    own flag, so an operator can tell a limit from a malformed body.
    """

    flag = "BRL"

    def __init__(self, key: str, found: str, limit: int) -> None:
        super().__init__(f"Request body has {found}; the limit is {limit} (limits.{key}).")
        self.key, self.found, self.limit = key, found, limit


class UnsupportedMediaType(ProxyError):
    """§2.1 / §2.2: 415 with 1.30.1's plain-text body (E9, E10)."""

    status_code = 415
    flag = "UMT"

    def to_reply(self) -> Reply:
        return Reply(self.status_code, self.message.encode("utf-8"), TEXT)

    @classmethod
    def charset(cls) -> UnsupportedMediaType:
        return cls(E9_CHARSET)

    @classmethod
    def content_type(cls, received: str) -> UnsupportedMediaType:
        return cls(E10_CONTENT_TYPE.format(content_type=received))


class MissingContentType(ProxyError):
    """§2.1: no Content-Type (or a body that is not UTF-8): Flask's generic 500 page (E11)."""

    status_code = 500
    flag = "NCT"

    def __init__(self, message: str = "no Content-Type header") -> None:
        super().__init__(message)

    def to_reply(self) -> Reply:
        return Reply(self.status_code, E11_PAGE.encode(), HTML)


class MethodNotAllowed(ProxyError):
    """§6.5 method not allowed: Werkzeug's 405 page with `Allow` (E14)."""

    status_code = 405
    flag = "MNA"

    def __init__(self, allow: tuple[str, ...] = ("OPTIONS", "POST")) -> None:
        super().__init__("method not allowed")
        self.allow = allow

    def to_reply(self) -> Reply:
        return Reply(self.status_code, E14_PAGE.encode(), HTML, (("allow", ", ".join(self.allow)),))


class NoRoute(ProxyError):
    """§6.5 no route: Werkzeug's 404 page (E15)."""

    status_code = 404
    flag = "NRT"

    def __init__(self, message: str = "no route") -> None:
        super().__init__(message)

    def to_reply(self) -> Reply:
        return Reply(self.status_code, E15_PAGE.encode(), HTML)


class UnknownModel(ProxyError):
    """§1.2 step 3: a model, version or stage the config does not serve."""

    status_code = 404
    flag = "NR"
    error_code = "RESOURCE_DOES_NOT_EXIST"

    def __init__(self, name: str, version: str) -> None:
        super().__init__(f"Model '{name}' version or stage '{version}' is not served.")


class UnknownEndpoint(ProxyError):
    """§1.5 step 3: a new-style URL that names no configured model."""

    status_code = 404
    flag = "NR"
    error_code = "RESOURCE_DOES_NOT_EXIST"

    def __init__(self, endpoint: str) -> None:
        super().__init__(f"Endpoint '{endpoint}' is not served.")


class PayloadTooLarge(ProxyError):
    """§4.2 body size: over the configured limit, refused before it is buffered."""

    status_code = 413
    flag = "PTL"
    error_code = "BAD_REQUEST"

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body exceeds the {limit} byte limit.")


class HeadTooLarge(ProxyError):
    """§6.5: a request head over `limits.header_bytes`, refused before it is buffered.

    431 when the headers are over the limit; 414 when the request line alone is. The
    connection is closed after it: the rest of the head is never read.
    """

    flag = "HTL"
    error_code = "BAD_REQUEST"

    def __init__(self, limit: int, *, request_line: bool = False) -> None:
        part = "Request line exceeds" if request_line else "Request header fields exceed"
        super().__init__(f"{part} the {limit} byte limit.")
        self.status_code = 414 if request_line else 431

    def to_reply(self) -> Reply:
        return Reply(
            self.status_code,
            mlflow_error_body(self.error_code, self.message),
            headers=(("connection", "close"),),
        )


class BodyTimeout(ProxyError):
    """§6.5: the body did not arrive within `limits.body_timeout_s`; the connection closes."""

    status_code = 408
    flag = "BT"
    error_code = "BAD_REQUEST"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"Request body not received within {seconds:g} s.")

    def to_reply(self) -> Reply:
        # The rest of the body may still come: the connection cannot carry another request.
        return Reply(
            self.status_code,
            mlflow_error_body(self.error_code, self.message),
            headers=(("connection", "close"),),
        )


class UpstreamConnectError(ProxyError):
    """§6.5 UF: the upstream could not be reached.

    `sent`: whether any of the request may have reached the upstream. True unless the
    client knows that nothing was written (refused, reset or timed out while connecting),
    because only a request that was never written is safe to send again or elsewhere:
    the model may have run on one that was.
    """

    status_code = 503
    flag = "UF"
    error_code = "TEMPORARILY_UNAVAILABLE"

    def __init__(
        self, message: str = "Model endpoint is unavailable.", *, sent: bool = True
    ) -> None:
        super().__init__(message)
        self.sent = sent


class UpstreamTimeout(ProxyError):
    """§6.5 UT: no reply within the route's timeout."""

    status_code = 504
    flag = "UT"
    error_code = "TEMPORARILY_UNAVAILABLE"

    def __init__(self, message: str = "Request processing time exceeded limit") -> None:
        super().__init__(message)


class UpstreamProtocolError(ProxyError):
    """§6.5 UPE: the upstream answered something that is not the protocol."""

    status_code = 502
    flag = "UPE"
    error_code = "INTERNAL_ERROR"

    def __init__(self, message: str = "Invalid response from model endpoint.") -> None:
        super().__init__(message)


class Overloaded(ProxyError):
    """§6.5 UO: the proxy's concurrency limit is reached."""

    status_code = 503
    flag = "UO"
    error_code = "TEMPORARILY_UNAVAILABLE"

    def __init__(self, message: str = "Too many concurrent requests.") -> None:
        super().__init__(message)


class ClientUnauthorized(ProxyError):
    """`client_auth`: the client did not prove who it is, or is not allowed; nothing was
    forwarded. 401 in the 1.x error shape, the code Databricks answers a bad token with."""

    status_code = 401
    flag = "UA"
    error_code = "CUSTOMER_UNAUTHORIZED"

    def __init__(
        self, message: str = "Credential was not sent or was of an unsupported type."
    ) -> None:
        super().__init__(message)


class IdentityUnavailable(ProxyError):
    """`client_auth: databricks`: the workspace that says who a token belongs to did not
    answer in time. 503, never a pass: an unproven client is not let through."""

    status_code = 503
    flag = "IU"
    error_code = "TEMPORARILY_UNAVAILABLE"

    def __init__(self, message: str = "Cannot verify the client's credentials now.") -> None:
        super().__init__(message)


class ClientClosed(ProxyError):
    """The client closed its connection before sending its whole body.

    Nobody reads the reply; the status is nginx's 499 so the access log and the metrics
    tell a departed client from a proxy bug (Envoy's flag `DC`).
    """

    status_code = 499
    flag = "DC"

    def __init__(self, message: str = "client closed the connection mid-request") -> None:
        super().__init__(message)


class InternalError(ProxyError):
    """§6.5 bug: an unhandled exception. No traceback reaches the client."""

    status_code = 500
    flag = "BUG"
    error_code = "INTERNAL_ERROR"

    def __init__(self, message: str = "Internal error.") -> None:
        super().__init__(message)


class Flagged(Protocol):
    """What `render` writes onto: the request's record (`telemetry.record`)."""

    flag: str
    detail: str | None


def render(error: ProxyError, record: Flagged | None = None) -> Reply:
    """The one place a local reply is made (architecture §1.4): the record learns the flag
    and the reason for the access log, the client gets the error in its protocol's shape."""
    if record is not None:
        record.flag, record.detail = error.flag, error.message
    return error.to_reply()


def render_bug(exc: BaseException, record: Flagged | None = None) -> Reply:
    """An unhandled exception: a 500 without a traceback for the client (§6.5 bug); the
    record names the exception, the caller's log line has the traceback."""
    reply = render(InternalError(), record)
    if record is not None:
        record.detail = type(exc).__name__
    return reply


class AdminError(ProxyError):
    """An admin API or dashboard request refused: `{"error": ..., "message": ...}` JSON.

    Its status varies (400, 401, 404, 405, 409, 503): the operator's tools read `error`, a
    stable word, and show `message` to a person.
    """

    flag = "ADM"

    def __init__(
        self, status: int, error: str, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status_code = status
        self.error = error
        self.headers = headers

    def to_reply(self) -> Reply:
        body = jsoncodec.dumps({"error": self.error, "message": self.message})
        return Reply(self.status_code, body, JSON, self.headers)
