"""The aiohttp client's exception table: every aiohttp error maps to a `ProxyError`.

Its behaviour against real servers is the seam's contract, run for every client in
test_base.py.
"""

from __future__ import annotations

import aiohttp
import pytest

from proxy.errors import ProxyError, UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from proxy.upstream.aiohttp import AIOHTTP_ERRORS
from proxy.upstream.base import map_exception


def subclasses(base: type) -> set[type]:
    found = set()
    for sub in base.__subclasses__():
        found.add(sub)
        found |= subclasses(sub)
    return found


@pytest.mark.parametrize(
    "exc_type",
    sorted(subclasses(aiohttp.ClientError) | {aiohttp.ClientError}, key=lambda t: t.__name__),
)
def test_every_aiohttp_error_is_mapped(exc_type: type) -> None:
    """httpx's test_httpcore_all_exceptions_mapped: no aiohttp error escapes unmapped."""
    assert any(issubclass(exc_type, foreign) for foreign, _ in AIOHTTP_ERRORS)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), UpstreamTimeout),
        (aiohttp.ServerTimeoutError(), UpstreamTimeout),
        # Nothing written yet: a connection failure, safe to retry.
        (aiohttp.ConnectionTimeoutError(), UpstreamConnectError),
        (aiohttp.ServerDisconnectedError(), UpstreamConnectError),
        (aiohttp.ClientPayloadError(), UpstreamProtocolError),
        (ValueError(), None),
    ],
)
def test_mapping_order(exc: BaseException, expected: type[ProxyError] | None) -> None:
    mapped = map_exception(exc, AIOHTTP_ERRORS)
    assert (type(mapped) if mapped else None) is expected
