"""The one renderer of local replies, checked against the whole `ProxyError` tree.

Exhaustive in the manner of httpx's exception-mapping test: a new error class fails here
until it has a row, so no error can reach a client in a shape nobody looked at.
"""

from __future__ import annotations

import pytest

from proxy import errors, jsoncodec
from proxy.errors import ProxyError, render, render_bug
from proxy.telemetry.record import ExchangeRecord

# One instance of every class, the status it answers and the content type it answers in.
CASES: list[tuple[ProxyError, int, str | None]] = [
    (errors.BadRequest("bad"), 400, errors.JSON),
    (errors.LimitExceeded("max_depth", "more than 100 levels of nesting", 100), 400, errors.JSON),
    (errors.UnsupportedMediaType.charset(), 415, errors.TEXT),
    (errors.MissingContentType(), 500, errors.HTML),
    (errors.MethodNotAllowed(("OPTIONS", "POST")), 405, errors.HTML),
    (errors.NoRoute(), 404, errors.HTML),
    (errors.UnknownModel("iris", "9"), 404, errors.JSON),
    (errors.UnknownEndpoint("ep"), 404, errors.JSON),
    (errors.PayloadTooLarge(10), 413, errors.JSON),
    (errors.HeadTooLarge(65536), 431, errors.JSON),
    (errors.HeadTooLarge(65536, request_line=True), 414, errors.JSON),
    (errors.BodyTimeout(30.0), 408, errors.JSON),
    (errors.UpstreamConnectError(), 503, errors.JSON),
    (errors.UpstreamTimeout(), 504, errors.JSON),
    (errors.UpstreamProtocolError(), 502, errors.JSON),
    (errors.Overloaded(), 503, errors.JSON),
    (errors.ClientUnauthorized(), 401, errors.JSON),
    (errors.IdentityUnavailable(), 503, errors.JSON),
    (errors.ClientClosed(), 499, errors.JSON),
    (errors.InternalError(), 500, errors.JSON),
    (errors.AdminError(401, "unauthorized", "no"), 401, errors.JSON),
]


def _tree(cls: type[ProxyError]) -> set[type[ProxyError]]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_tree(sub)}
    return out


def test_every_error_class_has_a_row() -> None:
    assert {type(error) for error, _, _ in CASES} == _tree(ProxyError)


def _record() -> ExchangeRecord:
    return ExchangeRecord("r1", "POST", "/model/iris/1/invocations", 0.0)


@pytest.mark.parametrize(("error", "status", "content_type"), CASES, ids=lambda v: type(v).__name__)
def test_render_answers_in_the_errors_shape_and_flags_the_record(
    error: ProxyError, status: int, content_type: str | None
) -> None:
    record = _record()
    reply = render(error, record)
    assert (reply.status, reply.content_type) == (status, content_type)
    assert (record.flag, record.detail) == (error.flag, error.message)
    if content_type == errors.JSON:
        body = jsoncodec.loads(reply.body)
        assert isinstance(body, dict)
        assert error.message in body.values()  # every JSON error says what went wrong


def test_a_bug_renders_as_a_500_without_its_text() -> None:
    record = _record()
    reply = render_bug(KeyError("secret detail"), record)
    assert reply.status == 500
    assert b"secret detail" not in reply.body
    assert (record.flag, record.detail) == ("BUG", "KeyError")
    assert render(errors.Overloaded()).status == 503  # no record: a reply all the same
