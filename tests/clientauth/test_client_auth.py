"""`client_auth`: clients proven before the proxy lends them its credentials.

The proxy runs on a loopback port in front of the serverless simulator; `databricks` mode
asks a small SCIM `Me` app on another loopback port that counts its calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.app import create_app
from proxy.clientauth import ClientAuth, Identity
from proxy.clientauth.tokenfile import TokenFile
from proxy.clientauth.workspace import DatabricksIdentity
from proxy.config import ADMIN_TOKEN_ENV, ConfigError, load_config, parse_config
from proxy.config.cutover import ClientKeyConfig
from proxy.config.identity import AllowConfig
from proxy.errors import ClientUnauthorized, IdentityUnavailable
from proxy.routing import ClientKey, bucket_of, client_key, report_label
from tests.secretwatch import assert_no_known_secret, secret
from tests.servers import LiveServer

pytestmark = pytest.mark.timeout(60)

GOOD = secret("dapi-good-client-token-0001")
OTHER = secret("dapi-other-client-token-0002")
WRONG = secret("dapi-wrong-client-token-9999")
SVC = secret("svc-secret-injected-0003")
ADMIN = secret("a" * 40)
ENV = {"SVC_TOKEN": SVC, ADMIN_TOKEN_ENV: ADMIN}
BODY = b'{"columns": ["a"], "data": [[1]]}'
JSON_CT = {"content-type": "application/json"}


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def doc(serverless: LiveServer, client_auth: dict[str, Any] | None, **extra: Any) -> Any:
    data: dict[str, Any] = {
        "backends": {"serverless": {"url": serverless.url, "token_env": "SVC_TOKEN"}},
        "models": {"iris": {"stages": {"Production": "1"}}},
        **extra,
    }
    if client_auth is not None:
        data["client_auth"] = client_auth
    return data


def sim_count(server: LiveServer) -> int:
    total: int = httpx.get(server.url + "/_sim/stats").json()["total"]
    return total


def score(url: str, token: str | None) -> httpx.Response:
    headers = dict(JSON_CT)
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return httpx.post(url + "/model/iris/1/invocations", content=BODY, headers=headers, timeout=10)


# -- start-up -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(
            {"backends": {"serverless": {"url": "http://x", "token_env": "T"}}}, id="backend"
        ),
        pytest.param(
            {
                "backends": {"serverless": {"url": "http://x"}},
                "models": {"iris": {"serverless": {"token_env": "T"}}},
            },
            id="model-override",
        ),
    ],
)
def test_injected_credentials_without_client_auth_refuse_to_start(where: dict[str, Any]) -> None:
    data = {"models": {"iris": {}}, **where}
    with pytest.raises(ConfigError) as info:
        parse_config(data, {"T": "t"}, "proxy.yaml")
    message = str(info.value)
    assert "client_auth: {mode: none}" in message
    assert "tokens | databricks" in message
    parse_config({**data, "client_auth": {"mode": "none"}}, {"T": "t"})


def test_no_injected_credentials_need_no_client_auth() -> None:
    parse_config({"backends": {"serverless": {"url": "http://x"}}, "models": {"iris": {}}}, {})


@pytest.mark.parametrize(
    ("client_auth", "needle"),
    [
        ({"mode": "tokens"}, "mode tokens needs tokens_file"),
        ({"mode": "none", "tokens_file": "t"}, "tokens_file is read only in mode tokens"),
        ({"mode": "tokens", "tokens_file": "t", "ttl_s": 5}, "ttl_s: read only in mode"),
        ({"mode": "none", "allow": {"users": ["a"]}}, "allow: needs a mode"),
        ({"mode": "databricks", "host": "adb-1.net"}, "host: must be an http"),
        ({"mode": "sometimes"}, "client_auth.mode"),
    ],
)
def test_a_bad_client_auth_section_names_the_key(client_auth: dict[str, Any], needle: str) -> None:
    data = {"backends": {"serverless": {"url": "http://x"}}, "models": {"iris": {}}}
    with pytest.raises(ConfigError, match="client_auth") as info:
        parse_config({**data, "client_auth": client_auth}, {})
    assert needle in str(info.value)


def test_a_bad_tokens_file_stops_start_up_naming_the_line(
    serverless: LiveServer, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"svc-a:{sha(GOOD)}\nsvc-b:{GOOD}\n")
    config = parse_config(doc(serverless, {"mode": "tokens", "tokens_file": str(tokens)}), ENV)
    with pytest.raises(ConfigError, match="line 2") as info:
        create_app(config)
    assert GOOD not in str(info.value)
    config = parse_config(doc(serverless, {"mode": "tokens", "tokens_file": "/nonexistent"}), ENV)
    with pytest.raises(ConfigError, match=r"client_auth\.tokens_file: /nonexistent"):
        create_app(config)


# -- tokens -------------------------------------------------------------------------------


@pytest.mark.usefixtures("reset_simulators")
def test_tokens_mode_refuses_unknown_clients_and_names_the_known_one(
    serverless: LiveServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serving_proxy")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"svc-reporting:{sha(GOOD)}\n")
    config = parse_config(doc(serverless, {"mode": "tokens", "tokens_file": str(tokens)}), ENV)
    with LiveServer(create_app(config), proxy_headers=False) as proxy:
        missing, wrong, right = (
            score(proxy.url, None),
            score(proxy.url, WRONG),
            score(proxy.url, GOOD),
        )
        report = httpx.get(
            proxy.url + "/admin/report", headers={"authorization": f"Bearer {ADMIN}"}
        ).text
        metrics = httpx.get(proxy.url + "/metrics").text
        admin = [
            httpx.get(proxy.url + path, headers={"authorization": f"Bearer {ADMIN}"})
            for path in (
                "/admin/models",
                "/admin/models/iris",
                "/admin/models/iris/history",
                "/admin/audit",
            )
        ]
        # Open as in 1.x: answered locally, nothing forwarded.
        assert httpx.get(proxy.url + "/ping").status_code == 200
    assert [missing.status_code, wrong.status_code, right.status_code] == [401, 401, 200]
    for refused in (missing, wrong):
        assert refused.json()["error_code"] == "CUSTOMER_UNAUTHORIZED"
        assert refused.headers["content-type"].startswith("application/json")
    # Only the proven client reached the endpoint, with the proxy's token.
    assert sim_count(serverless) == 1
    stats = httpx.get(serverless.url + "/_sim/stats").json()
    assert stats["last_request"]["headers"]["authorization"] == f"Bearer {SVC}"
    access = [json.loads(r.message) for r in caplog.records if r.name == "serving_proxy.access"]
    scored = [line for line in access if line["path"] == "/model/iris/1/invocations"]
    assert [(line["status"], line["flag"], line["identity"]) for line in scored] == [
        (401, "UA", None),
        (401, "UA", None),
        (200, "-", "svc-reporting"),
    ]
    refusals = [r.getMessage() for r in caplog.records if "client refused" in r.getMessage()]
    assert refusals == [
        f"client refused: no bearer token (request {scored[0]['request_id']})",
        f"client refused: unknown token (request {scored[1]['request_id']})",
    ]
    # The inventory names the proven client beside its label; the label, in the access log
    # and the metrics as everywhere, is the keyed hash.
    (client,) = json.loads(report)["models"]["iris"]["clients"]
    label = scored[2]["client_key"]
    assert client == {**client, "client": label, "identity": "svc-reporting", "requests": 1}
    assert label != "svc-reporting"
    assert len(label) == 12
    assert f'client="{label}"' in metrics
    assert "svc-reporting" not in metrics
    assert_no_known_secret(caplog.text)
    assert_no_known_secret(report)
    assert_no_known_secret(metrics)
    assert [answer.status_code for answer in admin] == [200] * 4
    assert_no_known_secret("".join(answer.text for answer in admin))


def test_a_relative_tokens_file_is_read_beside_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "tokens").write_text(f"svc-a:{sha(GOOD)}\n")
    path = tmp_path / "conf" / "proxy.yaml"
    path.write_text(
        "backends: {serverless: {url: 'http://127.0.0.1:9', token_env: SVC_TOKEN}}\n"
        "client_auth: {mode: tokens, tokens_file: tokens}\n"
        "models: {iris: {}}\n"
    )
    monkeypatch.chdir(tmp_path)  # not where the file is
    config = load_config(path, ENV)
    assert config.client_auth is not None
    assert config.client_auth.tokens_file == tmp_path / "conf" / "tokens"
    assert TokenFile(config.client_auth.tokens_file).identify(GOOD) == Identity("svc-a")


def test_the_tokens_file_is_reloaded_on_change_and_a_bad_reload_keeps_the_last_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    path = tmp_path / "tokens"
    path.write_text(f"svc-a:{sha(GOOD)}\n")
    tokens = TokenFile(path, clock=lambda: now[0])
    assert tokens.identify(GOOD) == Identity("svc-a")
    path.write_text(f"svc-b:{sha(OTHER)}\n")
    assert tokens.identify(OTHER) is None  # looked at no more than once a second
    now[0] = 1.0
    assert tokens.identify(OTHER) == Identity("svc-b")
    assert tokens.identify(GOOD) is None
    path.write_text(f"svc-b:{sha(OTHER)}\nbroken\n")
    now[0] = 2.0
    with caplog.at_level(logging.ERROR, logger="serving_proxy"):
        assert tokens.identify(OTHER) == Identity("svc-b")
    assert "not reloaded" in caplog.text
    assert "line 2" in caplog.text
    assert_no_known_secret(caplog.text + repr(tokens))


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


@pytest.mark.anyio
async def test_a_proven_token_is_remembered_until_the_file_is_read_again(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "tokens"
    path.write_text(f"svc-a:{sha(GOOD)}\n")
    tokens = TokenFile(path, clock=lambda: now[0])
    auth = ClientAuth(AllowConfig(), tokens=tokens)
    assert await auth.authenticate(bearer(GOOD), "r1") == Identity("svc-a")
    assert await auth.authenticate(bearer(GOOD), "r2") == Identity("svc-a")
    with pytest.raises(ClientUnauthorized):
        await auth.authenticate(bearer(WRONG), "r3")
    assert list(tokens.proven.values()) == [Identity("svc-a")]  # a guess leaves nothing
    # Another spelling of the same token is proven, but not remembered: one entry a token.
    for spelling in (f"bearer {GOOD}", f"Bearer  {GOOD} ", f"Bearer {GOOD}\t"):
        headers = [(b"authorization", spelling.encode())]
        assert await auth.authenticate(headers, "r") == Identity("svc-a")
    assert len(tokens.proven) == 1
    # The file drops the token: the next reading forgets what it had proven.
    path.write_text(f"svc-b:{sha(OTHER)}\n")
    now[0] = 1.0
    with pytest.raises(ClientUnauthorized):
        await auth.authenticate(bearer(GOOD), "r4")
    assert await auth.authenticate(bearer(OTHER), "r5") == Identity("svc-b")
    assert_no_known_secret(repr(tokens) + repr(auth))


@pytest.mark.anyio
async def test_only_allowed_tokens_are_remembered_and_the_set_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    names = [f"svc-{i}" for i in range(4)]
    path.write_text("".join(f"{name}:{sha(name + '-token')}\n" for name in names))
    tokens = TokenFile(path, max_proven=2)
    auth = ClientAuth(AllowConfig(users=tuple(names[1:])), tokens=tokens)
    for _ in range(2):
        with pytest.raises(ClientUnauthorized):
            await auth.authenticate(bearer("svc-0-token"), "r")
    assert tokens.proven == {}
    for name in names[1:]:
        assert await auth.authenticate(bearer(name + "-token"), "r") == Identity(name)
    assert sorted(identity.name for identity in tokens.proven.values()) == ["svc-2", "svc-3"]
    # The one let go is proven again by its digest.
    assert await auth.authenticate(bearer("svc-1-token"), "r") == Identity("svc-1")


def served_backend(
    serverless: LiveServer, legacy: LiveServer, proxy: LiveServer, token: str
) -> str:
    """Which simulator answered one scoring request of this client (both reset first)."""
    for server in (serverless, legacy):
        httpx.post(server.url + "/_sim/reset").raise_for_status()
    headers = {**JSON_CT, "authorization": f"Bearer {token}", "x-serving-proxy-route": "serverless"}
    reply = httpx.post(proxy.url + "/model/iris/1/invocations", content=BODY, headers=headers)
    assert reply.status_code == 200
    counts = {
        name: sim_count(server) for name, server in (("serverless", serverless), ("legacy", legacy))
    }
    assert sorted(counts.values()) == [0, 1]
    return max(counts, key=lambda name: counts[name])


@pytest.mark.usefixtures("reset_simulators")
@pytest.mark.parametrize("identity_key", [True, False])
def test_the_identity_keys_sticky_routing_and_route_overrides(
    serverless: LiveServer, legacy: LiveServer, tmp_path: Path, identity_key: bool
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"svc-a:{sha(GOOD)}\nsvc-b:{sha(OTHER)}\n")
    a, b = bucket_of("svc-a"), bucket_of("svc-b")
    assert a != b
    # The lower bucket's client goes to serverless, the higher one's to legacy.
    percent = max(a, b) / 100
    data = doc(
        serverless,
        {"mode": "tokens", "tokens_file": str(tokens)},
        client_key={"identity": identity_key, "address": True},
    )
    data["backends"]["legacy"] = {"url": legacy.url}
    data["models"]["iris"]["serverless_percent"] = percent
    with LiveServer(create_app(parse_config(data, ENV)), proxy_headers=False) as proxy:
        where = {token: served_backend(serverless, legacy, proxy, token) for token in (GOOD, OTHER)}
    if identity_key:
        # Both clients call from 127.0.0.1; their identities split them.
        low, high = (GOOD, OTHER) if a < b else (OTHER, GOOD)
        assert (where[low], where[high]) == ("serverless", "legacy")
    else:
        assert where[GOOD] == where[OTHER]
    # The override list names identities: svc-b may pick serverless, svc-a (same address)
    # may not.
    data["models"]["iris"]["serverless_percent"] = 0
    data["route_override"] = {"clients": ["svc-b"]}
    with LiveServer(create_app(parse_config(data, ENV)), proxy_headers=False) as proxy:
        assert served_backend(serverless, legacy, proxy, OTHER) == "serverless"
        assert served_backend(serverless, legacy, proxy, GOOD) == "legacy"


# -- databricks ---------------------------------------------------------------------------


class ScimMe:
    """A workspace's SCIM `Me` endpoint: knows one token, counts every call."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False
        self.delay_s = 0.0

    async def me(self, request: Request) -> Response:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.down:
            return Response(b"upstream connect error", status_code=503)
        if request.headers.get("authorization") == f"Bearer {GOOD}":
            return JSONResponse(
                {
                    "userName": "ana@example.com",
                    "groups": [{"display": "scorers", "value": "17"}],
                }
            )
        return JSONResponse(
            {"error_code": "401", "message": "Credential was not sent"}, status_code=401
        )

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/api/2.0/preview/scim/v2/Me", self.me)])


@pytest.fixture
def scim() -> Iterator[tuple[ScimMe, LiveServer]]:
    me = ScimMe()
    with LiveServer(me.app()) as server:
        yield me, server


@pytest.mark.usefixtures("reset_simulators")
def test_databricks_mode_looks_a_token_up_once_per_ttl_and_remembers_refusals(
    serverless: LiveServer,
    scim: tuple[ScimMe, LiveServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="serving_proxy")
    me, workspace = scim
    client_auth = {"mode": "databricks", "host": workspace.url, "ttl_s": 1, "negative_ttl_s": 60}
    config = parse_config(doc(serverless, client_auth), ENV)
    with LiveServer(create_app(config), proxy_headers=False) as proxy:
        first = [score(proxy.url, GOOD).status_code for _ in range(5)]
        calls_within_ttl = me.calls
        time.sleep(1.1)
        again = score(proxy.url, GOOD).status_code
        calls_after_ttl = me.calls
        refused = [score(proxy.url, WRONG) for _ in range(3)]
        calls_after_refusals = me.calls
    assert first == [200] * 5
    assert (calls_within_ttl, again, calls_after_ttl) == (1, 200, 2)
    assert [r.status_code for r in refused] == [401] * 3
    assert refused[0].json()["error_code"] == "CUSTOMER_UNAUTHORIZED"
    # One look-up for the wrong token: the two retries hit the negative cache.
    assert calls_after_refusals == 3
    assert sim_count(serverless) == 6
    access = [json.loads(r.message) for r in caplog.records if r.name == "serving_proxy.access"]
    assert {line["identity"] for line in access if line["status"] == 200} == {"ana@example.com"}
    assert_no_known_secret(caplog.text)


@pytest.mark.usefixtures("reset_simulators")
def test_databricks_mode_answers_503_when_the_workspace_cannot_say_and_never_lets_through(
    serverless: LiveServer, scim: tuple[ScimMe, LiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serving_proxy")
    me, workspace = scim
    me.down = True
    client_auth = {"mode": "databricks", "host": workspace.url, "timeout_s": 0.5}
    config = parse_config(doc(serverless, client_auth), ENV)
    with LiveServer(create_app(config), proxy_headers=False) as proxy:
        down = score(proxy.url, GOOD)
        me.down, me.delay_s = False, 2.0
        slow = score(proxy.url, GOOD)
        me.delay_s = 0.0
        # Failures are not remembered: the workspace back, the client gets in.
        back = score(proxy.url, GOOD)
    for reply in (down, slow):
        assert reply.status_code == 503
        assert reply.json() == {
            "error_code": "TEMPORARILY_UNAVAILABLE",
            "message": "Cannot verify the client's credentials now.",
        }
    assert back.status_code == 200
    assert sim_count(serverless) == 1
    assert_no_known_secret(caplog.text)


def test_databricks_allow_refuses_a_proven_client_it_does_not_list(
    serverless: LiveServer, scim: tuple[ScimMe, LiveServer]
) -> None:
    _, workspace = scim
    refused = {"mode": "databricks", "host": workspace.url, "allow": {"users": ["bob"]}}
    by_group = {"mode": "databricks", "host": workspace.url, "allow": {"groups": ["scorers"]}}
    with LiveServer(create_app(parse_config(doc(serverless, refused), ENV))) as proxy:
        assert score(proxy.url, GOOD).status_code == 401
    with LiveServer(create_app(parse_config(doc(serverless, by_group), ENV))) as proxy:
        assert score(proxy.url, GOOD).status_code == 200


@pytest.mark.anyio
async def test_concurrent_look_ups_of_one_token_make_one_call(
    scim: tuple[ScimMe, LiveServer],
) -> None:
    me, workspace = scim
    me.delay_s = 0.2
    lookup = DatabricksIdentity(workspace.url, ttl_s=300, negative_ttl_s=30, timeout_s=5)
    try:
        found = await asyncio.gather(*(lookup.identify(GOOD) for _ in range(50)))
        refused = await asyncio.gather(*(lookup.identify(WRONG) for _ in range(50)))
        me.down = True
        me.delay_s = 0.0
        other = await asyncio.gather(
            *(lookup.identify(OTHER) for _ in range(20)), return_exceptions=True
        )
    finally:
        await lookup.aclose()
    assert set(found) == {Identity("ana@example.com", ("scorers", "17"))}
    assert set(refused) == {None}
    assert all(isinstance(result, IdentityUnavailable) for result in other)
    assert me.calls == 3
    assert_no_known_secret(repr(lookup))


def test_a_proven_identity_is_the_key_and_what_overrides_match() -> None:
    headers = [(b"x-client", b"chosen")]
    by_identity = client_key(headers, "10.0.0.1", ClientKeyConfig(identity=True), "svc-a")
    assert by_identity == ClientKey("identity", "svc-a", "svc-a")
    by_address = client_key(headers, "10.0.0.1", ClientKeyConfig(), "svc-a")
    assert by_address == ClientKey("address", "10.0.0.1", "svc-a")
    unproven = client_key(headers, "10.0.0.1", ClientKeyConfig(identity=True))
    assert unproven == ClientKey("address", "10.0.0.1", "10.0.0.1")
    # Labelled like any key: a keyed hash (the name travels beside it, as the identity).
    assert report_label(by_identity, b"secret") not in ("svc-a", report_label(by_identity, b"x"))
    assert report_label(by_address, b"secret") != "10.0.0.1"
