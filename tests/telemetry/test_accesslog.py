"""The access-log line: its fields, its outcome flag, and what it must never hold."""

from __future__ import annotations

import logging

import pytest

from proxy import jsoncodec
from proxy.models import Backend
from proxy.telemetry.accesslog import emit, fields, iso_time, outcome
from proxy.telemetry.record import ExchangeRecord


def record(**kwargs: object) -> ExchangeRecord:
    r = ExchangeRecord(
        request_id="rid-1", method="POST", path="/model/iris/1/invocations", started=0
    )
    r.client, r.client_key, r.model, r.version = "10.1.2.3", "0123456789ab", "iris", "1"
    r.legacy_format, r.backend, r.status = "pandas-split", Backend.SERVERLESS, 200
    r.upstream_s, r.translate_s, r.total_s = 0.0123456, 0.0004, 0.0150004
    for name, value in kwargs.items():
        setattr(r, name, value)
    return r


def test_fields_of_a_translated_request() -> None:
    line = fields(record(), now=1_800_000_000.25)
    assert line == {
        "time": "2027-01-15T08:00:00.250Z",
        "replica_id": None,
        "request_id": "rid-1",
        "method": "POST",
        "path": "/model/iris/1/invocations",
        "client_key": "0123456789ab",
        "identity": None,
        "model": "iris",
        "version": "1",
        "legacy_format": "pandas-split",
        "backend": "serverless",
        "status": 200,
        "outcome": "OK",
        "flag": "-",
        "upstream_ms": 12.346,
        "translate_ms": 0.4,
        "proxy_ms": 2.655,
        "total_ms": 15.0,
        "detail": None,
        "retries": [],
        "retry_stop": None,
        "held_ms": 0.0,
        "spill": None,
        "queued_ms": 0.0,
        "queue": None,
    }


def test_a_held_retried_queued_and_spilled_request_says_so() -> None:
    line = fields(
        record(
            retries=("429", "connect"),
            retry_stop="retry_budget",
            held_s=1.5,
            spill="429",
            queued_s=0.25,
            queue="waited",
            backend=Backend.LEGACY,
        )
    )
    assert {
        k: line[k] for k in ("retries", "retry_stop", "held_ms", "spill", "queued_ms", "queue")
    } == {
        "retries": ["429", "connect"],
        "retry_stop": "retry_budget",
        "held_ms": 1500.0,
        "spill": "429",
        "queued_ms": 250.0,
        "queue": "waited",
    }


def test_the_raw_address_never_reaches_the_line() -> None:
    text = jsoncodec.dumps(fields(record())).decode()
    assert "10.1.2.3" not in text


def test_a_local_reply_has_no_upstream_and_all_time_is_the_proxys() -> None:
    line = fields(record(backend=None, upstream_s=None, status=404, flag="NR", total_s=0.001))
    assert (line["upstream_ms"], line["proxy_ms"], line["outcome"]) == (None, 1.0, "NR")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({}, "OK", id="ok"),
        pytest.param({"status": 302}, "OK", id="redirect"),
        pytest.param({"status": 400}, "UE", id="upstream-400"),
        pytest.param({"status": 503}, "UE", id="upstream-503"),
        pytest.param({"status": 504, "flag": "UT"}, "UT", id="timeout"),
        pytest.param({"status": 401, "backend": None}, "LE", id="admin-refused"),
        pytest.param({"status": 0, "backend": None}, "NS", id="client-gone"),
        pytest.param({"status": 500, "flag": "BUG"}, "BUG", id="bug"),
    ],
)
def test_outcome(kwargs: dict[str, object], expected: str) -> None:
    assert outcome(record(**kwargs)) == expected


def test_iso_time_is_utc_with_milliseconds() -> None:
    assert iso_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(1.9999) == "1970-01-01T00:00:01.999Z"


def test_emit_writes_one_json_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="serving_proxy.access")
    emit(record(), replica_id="proxy-b")
    [entry] = caplog.records
    assert entry.levelno == logging.INFO
    assert "\n" not in entry.getMessage()
    line = jsoncodec.loads(entry.getMessage())
    assert (line["request_id"], line["replica_id"]) == ("rid-1", "proxy-b")


@pytest.mark.parametrize(
    ("kwargs", "logged", "level"),
    [
        pytest.param({}, False, None, id="success-silent"),
        pytest.param({"status": 404, "flag": "NR"}, True, logging.INFO, id="local-reply"),
        pytest.param({"status": 503}, True, logging.WARNING, id="upstream-5xx"),
    ],
)
def test_access_log_off_still_logs_failures(
    caplog: pytest.LogCaptureFixture, kwargs: dict[str, object], logged: bool, level: int | None
) -> None:
    caplog.set_level(logging.INFO, logger="serving_proxy.access")
    emit(record(**kwargs), enabled=False)
    assert len(caplog.records) == int(logged)
    if logged:
        assert caplog.records[0].levelno == level
