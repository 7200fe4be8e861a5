"""Where each model's injected token comes from (§7.1 `inject` vs `passthrough`, §7.2).

What each backend receives on the wire is in tests/test_headers.py."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from proxy.config import ConfigError, parse_config
from proxy.credentials import (
    FAILED_REFRESH_PAUSE_S,
    Credentials,
    RefreshingToken,
    StaticToken,
    build_credentials,
    lease_of,
)
from proxy.errors import UpstreamConnectError
from tests.secretwatch import secret

ENV = {
    "SVC_TOKEN": secret("dapi-service"),
    "OTHER_TOKEN": secret("dapi-other"),
    "LEGACY_TOKEN": secret("dapi-legacy"),
}


def test_each_model_gets_its_backends_token_or_its_own_override() -> None:
    config = parse_config(
        {
            "backends": {"serverless": {"url": "http://127.0.0.1:1", "token_env": "SVC_TOKEN"}},
            "models": {"iris": {}, "wine": {"serverless": {"token_env": "OTHER_TOKEN"}}},
            "client_auth": {"mode": "none"},
        },
        ENV,
    )
    sources = build_credentials(config).serverless
    assert sources["iris"] == StaticToken("dapi-service")
    assert sources["wine"] == StaticToken("dapi-other")


def test_no_token_env_passes_the_clients_authorization_through() -> None:
    config = parse_config(
        {"backends": {"serverless": {"url": "http://127.0.0.1:1"}}, "models": {"iris": {}}}, {}
    )
    assert build_credentials(config) == Credentials(serverless={"iris": None}, legacy={})


def test_the_legacy_backend_gets_its_token_env_or_a_models_override() -> None:
    config = parse_config(
        {
            "backends": {
                "serverless": {"url": "http://127.0.0.1:1"},
                "legacy": {"url": "http://127.0.0.1:2", "token_env": "LEGACY_TOKEN"},
            },
            "models": {"iris": {}, "wine": {"legacy": {"token_env": "OTHER_TOKEN"}}},
            "client_auth": {"mode": "none"},
        },
        ENV,
    )
    credentials = build_credentials(config)
    assert credentials.serverless == {"iris": None, "wine": None}
    assert credentials.legacy == {
        "iris": StaticToken("dapi-legacy"),
        "wine": StaticToken("dapi-other"),
    }


def test_a_legacy_backend_without_token_env_passes_the_clients_authorization() -> None:
    config = parse_config(
        {
            "backends": {
                "serverless": {"url": "http://127.0.0.1:1"},
                "legacy": {"url": "http://127.0.0.1:2"},
            },
            "models": {"iris": {}},
        },
        {},
    )
    assert build_credentials(config).legacy == {"iris": None}


def test_a_token_never_shows_in_a_repr() -> None:
    assert "dapi" not in repr(StaticToken("dapi-service"))
    assert "dapi" not in repr({"iris": StaticToken("dapi-service")})
    assert "dapi" not in repr(Credentials({"iris": StaticToken("dapi-service")}))


# `auth:` and its shorthand `token_env:`.


def backend_doc(**serverless: object) -> dict[str, object]:
    return {
        "backends": {"serverless": {"url": "http://127.0.0.1:1", **serverless}},
        "models": {"iris": {}},
        "client_auth": {"mode": "none"},
    }


def test_token_env_is_the_shorthand_of_auth_token_env() -> None:
    short = parse_config(backend_doc(token_env="SVC_TOKEN"), ENV)
    full = parse_config(backend_doc(auth={"token_env": "SVC_TOKEN"}), ENV)
    assert short.backends.serverless is not None
    assert full.backends.serverless is not None
    assert short.backends.serverless.auth == full.backends.serverless.auth
    assert short.token_envs() == full.token_envs() == {"SVC_TOKEN"}
    assert build_credentials(short) == build_credentials(full)


def test_auth_and_its_shorthand_together_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"backends\.serverless: .*auth.*token_env"):
        parse_config(backend_doc(auth="databricks", token_env="SVC_TOKEN"), ENV, "proxy.yaml")


def test_a_models_override_names_its_own_auth() -> None:
    doc = backend_doc(auth="databricks")
    doc["models"] = {
        "iris": {},
        "wine": {"serverless": {"auth": {"token_env": "OTHER_TOKEN"}}},
        "plain": {"serverless": {"token_env": "SVC_TOKEN"}},
    }
    config = parse_config(doc, ENV)
    assert config.token_envs() == {"OTHER_TOKEN", "SVC_TOKEN"}
    sources = build_credentials(config).serverless
    assert isinstance(sources["iris"], RefreshingToken)
    assert sources["wine"] == StaticToken("dapi-other")
    assert sources["plain"] == StaticToken("dapi-service")


def test_an_auth_token_env_that_is_not_set_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="MISSING_TOKEN"):
        parse_config(backend_doc(auth={"token_env": "MISSING_TOKEN"}), ENV, "proxy.yaml")


def test_an_unknown_auth_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"backends\.serverless\.auth"):
        parse_config(backend_doc(auth="oauth"), ENV, "proxy.yaml")


# When a refreshing token is fetched, from a fetch of the test's own (no SDK, no network).


def test_the_lease_of_a_token_refreshes_ahead_and_stops_before_expiry() -> None:
    hour = lease_of("t", 3600.0, now=100.0)
    assert (hour.refresh_at, hour.expires_at) == (100.0 + 3600 - 30, 100.0 + 3600 - 5)
    short = lease_of("t", 8.0, now=0.0)
    assert (short.refresh_at, short.expires_at) == (6.0, 7.2)
    unknown = lease_of("t", None, now=0.0)
    assert unknown.refresh_at == 30.0
    assert unknown.expires_at == math.inf
    assert "t'" not in repr(hour)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingFetch:
    """Gives `tok-1`, `tok-2`, … each valid `lifetime_s`, or fails while `failing`."""

    def __init__(self, lifetime_s: float | None = 60.0) -> None:
        self.lifetime_s = lifetime_s
        self.calls: list[tuple[str | None, bool]] = []
        self.failing = False

    def __call__(self, held: str | None, force: bool) -> tuple[str, float | None]:
        self.calls.append((held, force))
        if self.failing:
            raise ValueError("invalid_client: refused")
        time.sleep(0.05)  # long enough for every waiter to arrive while it runs
        return f"tok-{len(self.calls)}", self.lifetime_s


@pytest.mark.anyio
async def test_a_token_is_fetched_once_for_many_callers_and_refreshed_ahead() -> None:
    fetch, clock = CountingFetch(), Clock()
    source = RefreshingToken(fetch, name="ws", clock=clock)
    assert await asyncio.gather(*(source.token() for _ in range(200))) == ["tok-1"] * 200
    clock.now = 50.0  # due (60 s - 15 s lead), still good: served while one refresh runs
    assert await asyncio.gather(*(source.token() for _ in range(200))) == ["tok-1"] * 200
    await asyncio.sleep(0.2)
    assert await source.token() == "tok-2"
    assert fetch.calls == [(None, False), ("tok-1", False)]


@pytest.mark.anyio
async def test_after_a_401_many_callers_cause_one_forced_fetch() -> None:
    fetch = CountingFetch()
    source = RefreshingToken(fetch, name="ws", clock=Clock())
    assert await source.token() == "tok-1"
    renewed = await asyncio.gather(*(source.renew("tok-1") for _ in range(100)))
    assert renewed == ["tok-2"] * 100
    assert fetch.calls == [(None, False), ("tok-1", True)]
    # A fetch that gives the rejected token again means there is no other: the 401 stands.
    same = RefreshingToken(lambda held, force: ("pat", None), name="ws", clock=Clock())
    assert await same.token() == "pat"
    assert await same.renew("pat") is None


@pytest.mark.anyio
async def test_a_failed_fetch_is_a_503_and_paused_not_repeated_per_request() -> None:
    fetch, clock = CountingFetch(), Clock()
    fetch.failing = True
    source = RefreshingToken(fetch, name="ws", clock=clock)
    for _ in range(3):
        with pytest.raises(UpstreamConnectError) as info:
            await source.token()
        assert info.value.sent is False
        assert "invalid_client" not in info.value.message
    assert len(fetch.calls) == 1
    fetch.failing = False
    clock.now = FAILED_REFRESH_PAUSE_S + 0.1
    assert await source.token() == "tok-2"


@pytest.mark.anyio
async def test_a_caller_that_goes_away_does_not_cancel_the_fetch_others_wait_for() -> None:
    fetch = CountingFetch()
    source = RefreshingToken(fetch, name="ws", clock=Clock())
    first = asyncio.ensure_future(source.token())
    second = asyncio.ensure_future(source.token())
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == "tok-1"
    assert len(fetch.calls) == 1


def test_a_refreshing_token_never_shows_in_a_repr() -> None:
    source = RefreshingToken(lambda held, force: ("dapi-secret", None), name="https://ws")
    assert "dapi" not in repr(source)
    assert "dapi" not in repr(Credentials({"iris": source}))


def test_a_validated_backend_dumps_and_validates_again() -> None:
    config = parse_config(backend_doc(token_env="SVC_TOKEN"), ENV)
    backend = config.backends.serverless
    assert backend is not None
    assert backend.token_env is None
    assert type(backend).model_validate(backend.model_dump()) == backend
