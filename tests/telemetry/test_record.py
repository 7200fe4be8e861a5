"""What is read straight off the record: the Server-Timing value."""

from __future__ import annotations

from proxy.models import Backend
from proxy.telemetry.record import ExchangeRecord, server_timing


def test_proxy_part_excludes_the_upstream_wait() -> None:
    record = ExchangeRecord(request_id="r", method="POST", path="/", started=10.0)
    record.upstream_s, record.backend = 0.030, Backend.LEGACY
    assert (
        server_timing(record, now=10.040) == b'proxy;dur=10.000, upstream;dur=30.000;desc="legacy"'
    )


def test_translation_gets_its_own_part() -> None:
    record = ExchangeRecord(request_id="r", method="POST", path="/", started=10.0)
    record.upstream_s, record.backend, record.translate_s = 0.010, Backend.SERVERLESS, 0.0005
    assert server_timing(record, now=10.020) == (
        b'proxy;dur=10.000, upstream;dur=10.000;desc="serverless", translate;dur=0.500'
    )


def test_retries_holds_queue_and_spill_are_told() -> None:
    record = ExchangeRecord(request_id="r", method="POST", path="/", started=10.0)
    record.upstream_s, record.backend = 0.010, Backend.LEGACY
    record.retries, record.held_s, record.queued_s, record.spill = ("429", "429"), 2.0, 0.5, "429"
    assert server_timing(record, now=13.020) == (
        b'proxy;dur=3010.000, upstream;dur=10.000;desc="legacy", retry;desc="2", '
        b'hold;dur=2000.000, queue;dur=500.000, spill;desc="legacy after 429"'
    )
