"""A workspace's OAuth machine-to-machine side, for tests: OIDC discovery and a token
endpoint as the Databricks SDK expects them, issuing short-lived tokens.

`workspace_app(oauth, simulator_app)` serves both on one host, as a workspace does: the
SDK is given the backend's URL as its host and discovers the token endpoint at
`<host>/oidc/.well-known/oauth-authorization-server` (newer SDKs find that `/oidc` root in
`<host>/.well-known/databricks-config` first); the serving simulator behind it
accepts only the tokens `oauth` issued, unexpired and unrevoked.

    oauth = OAuthServer(client_id="sp", client_secret="s3cret", lifetime_s=6)
    with LiveServer(workspace_app(oauth, create_simulator_app("serverless"))) as ws:
        ...  # DATABRICKS_CLIENT_ID=sp DATABRICKS_CLIENT_SECRET=s3cret, host ws.url
        oauth.revoke_all()
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.secretwatch import secret

# Newer SDKs first read the host's metadata for the OIDC root, then discover under it.
METADATA_PATH = "/.well-known/databricks-config"
DISCOVERY_PATH = "/oidc/.well-known/oauth-authorization-server"
TOKEN_PATH = "/oidc/v1/token"


class OAuthServer:
    """Issues bearer tokens for one client (HTTP Basic client credentials, as the SDK's
    `oauth-m2m` sends them), `lifetime_s` each, and counts the token requests.

    Thread-safe: the test, the served app and the proxy's threads all reach it.
    """

    def __init__(self, *, client_id: str, client_secret: str, lifetime_s: int = 60) -> None:
        self.client_id = client_id
        self._client_secret = secret(client_secret)
        self.lifetime_s = lifetime_s
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}
        # Token requests that got a token; refused ones are counted in `refused`.
        self.issued = 0
        self.refused = 0
        self.issued_at: list[float] = []
        # Every token issued, so a test can grep what the proxy logged for them.
        self.tokens: list[str] = []

    def __repr__(self) -> str:
        return f"OAuthServer({self.client_id!r})"

    def accepts(self, token: str) -> bool:
        """Whether `token` was issued here, has not expired and was not revoked."""
        with self._lock:
            expiry = self._expiry.get(token)
        return expiry is not None and time.monotonic() < expiry

    def revoke_all(self) -> None:
        """Every token issued so far is refused from now on."""
        with self._lock:
            self._expiry.clear()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(METADATA_PATH, self._metadata, methods=["GET"]),
                Route(DISCOVERY_PATH, self._discovery, methods=["GET"]),
                Route(TOKEN_PATH, self._token, methods=["POST"]),
            ]
        )

    async def _metadata(self, request: Request) -> JSONResponse:
        base = f"{request.url.scheme}://{request.url.netloc}"
        return JSONResponse({"oidc_endpoint": f"{base}/oidc", "workspace_id": "1"})

    async def _discovery(self, request: Request) -> JSONResponse:
        base = f"{request.url.scheme}://{request.url.netloc}"
        return JSONResponse(
            {
                "issuer": f"{base}/oidc",
                "authorization_endpoint": f"{base}/oidc/v1/authorize",
                "token_endpoint": f"{base}{TOKEN_PATH}",
            }
        )

    async def _token(self, request: Request) -> JSONResponse:
        form = parse_qs((await request.body()).decode("ascii"))
        if form.get("grant_type") != ["client_credentials"]:
            return self._refuse("unsupported_grant_type")
        if not self._client_ok(request.headers.get("authorization", "")):
            return self._refuse("invalid_client")
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._expiry[token] = time.monotonic() + self.lifetime_s
            self.issued += 1
            self.issued_at.append(time.monotonic())
            self.tokens.append(secret(token))
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime_s}
        )

    def _client_ok(self, authorization: str) -> bool:
        scheme, _, encoded = authorization.partition(" ")
        if scheme != "Basic":
            return False
        try:
            client_id, _, secret = base64.b64decode(encoded).decode("utf-8").partition(":")
        except ValueError:
            return False
        return client_id == self.client_id and secrets.compare_digest(secret, self._client_secret)

    def _refuse(self, error: str) -> JSONResponse:
        with self._lock:
            self.refused += 1
        return JSONResponse({"error": error, "error_description": "refused"}, 401)


def workspace_app(oauth: OAuthServer, simulator: Starlette) -> ASGIApp:
    """`oauth`'s endpoints under `/oidc`, everything else to `simulator`, which from now on
    accepts only `oauth`'s current tokens."""
    simulator.state.simulator.accept_token = oauth.accepts
    issuer = oauth.app()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path.startswith("/oidc/") or path == METADATA_PATH:
            await issuer(scope, receive, send)
        else:
            await simulator(scope, receive, send)

    return app
