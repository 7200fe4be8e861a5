"""The one HTTP client of a running proxy's admin API, shared by every CLI command.

The proxy is `--url`, else `$SERVING_PROXY_URL`, else http://127.0.0.1:8080; the token is
`$SERVING_PROXY_ADMIN_TOKEN`, never a flag, so it stays out of shell history and `ps`.
httpx is the control-plane client (the request path has its own, `proxy.upstream`).
Every failure becomes one `CliError` whose message says what to do; nothing is printed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from proxy import jsoncodec
from proxy.config import ADMIN_TOKEN_ENV

URL_ENV = "SERVING_PROXY_URL"
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 10.0


class CliError(Exception):
    """A failure to report in one line; `code` is the exit status, `status` the proxy's
    HTTP status when it answered with an error (else None)."""

    def __init__(self, message: str, code: int = 1, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class AdminClient:
    """Requests to one proxy's admin API, with its token, mapped to JSON or a `CliError`."""

    def __init__(self, url: str, token: str | None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.base_url = url.rstrip("/")
        self.token = token or None
        self.timeout = timeout

    @classmethod
    def from_environment(
        cls, url: str | None, environ: Mapping[str, str], timeout: float = DEFAULT_TIMEOUT_S
    ) -> AdminClient:
        """The client for `--url` (None: the environment's, else the default)."""
        return cls(
            url or environ.get(URL_ENV) or DEFAULT_URL, environ.get(ADMIN_TOKEN_ENV), timeout
        )

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """The decoded JSON reply of `method path`.

        Raises:
            CliError: unreachable, no admin API, refused, not JSON, or an error reply (with
                the admin API's own message).
        """
        target = self.base_url + path
        headers = {"accept": "application/json", "content-type": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        try:
            response = httpx.request(
                method,
                target,
                headers=headers,
                content=None if body is None else jsoncodec.dumps(body),
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {target}: {exc}") from None
        status = response.status_code
        if status == 404 and "json" not in response.headers.get("content-type", ""):
            raise CliError(
                f"{self.base_url} has no admin API: is {ADMIN_TOKEN_ENV} set where the proxy runs?"
            )
        if status in (401, 403):
            hint = "" if self.token else f" (set {ADMIN_TOKEN_ENV})"
            raise CliError(f"{target} refused the admin token: {status}{hint}")
        try:
            data = jsoncodec.loads(response.content)
        except ValueError:
            raise CliError(f"{target} did not answer JSON (HTTP {status})") from None
        if status >= 400:
            message = data.get("message") if isinstance(data, dict) else None
            raise CliError(f"{target} answered {status}: {message or data}", status=status)
        return data
