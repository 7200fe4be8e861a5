"""The upstream seam over httpx, so `overhead.py` can measure it beside the proxy's clients.

Benchmark-only: the proxy never uses it. httpx's pool rescans every connection per request
(encode/httpx#3215), which is why it is not one of the clients `server.upstream_client` offers.
"""

from __future__ import annotations

import time

import httpx

from proxy.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from proxy.models import UpstreamReply
from proxy.upstream.base import ErrorTable, Headers, UpstreamSettings, map_exception

HTTPX_ERRORS: ErrorTable = (
    (httpx.TimeoutException, UpstreamTimeout),
    (httpx.RemoteProtocolError, UpstreamProtocolError),
    (httpx.DecodingError, UpstreamProtocolError),
    (httpx.NetworkError, UpstreamConnectError),
    (httpx.HTTPError, UpstreamProtocolError),
)


class HttpxUpstream:
    """The same seam as `proxy.upstream.base.Upstream`, over one httpx pool per origin."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.total_timeout_s, connect=settings.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=settings.pool_size, max_keepalive_connections=settings.pool_size
            ),
            follow_redirects=False,
        )

    async def send(self, method: str, path: str, headers: Headers, body: bytes) -> UpstreamReply:
        t0 = time.perf_counter()
        try:
            resp = await self._client.request(
                method, self.settings.origin + path, headers=list(headers), content=body
            )
        except Exception as exc:
            mapped = map_exception(exc, HTTPX_ERRORS)
            if mapped is None:
                raise
            raise mapped from exc
        # httpx always decodes Content-Encoding: fine for the benchmark's translated path,
        # which is the only place this class serves.
        headers_out = tuple(
            (k, v) for k, v in resp.headers.multi_items() if k.lower() != "content-encoding"
        )
        return UpstreamReply(resp.status_code, headers_out, resp.content, time.perf_counter() - t0)

    async def aclose(self) -> None:
        await self._client.aclose()
