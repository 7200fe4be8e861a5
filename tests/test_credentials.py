"""Where each model's injected token comes from (§7.1 `inject` vs `passthrough`, §7.2).

What each backend receives on the wire is in tests/test_headers.py."""

from __future__ import annotations

from proxy.config import parse_config
from proxy.credentials import Credentials, StaticToken, build_credentials

ENV = {"SVC_TOKEN": "dapi-service", "OTHER_TOKEN": "dapi-other", "LEGACY_TOKEN": "dapi-legacy"}


def test_each_model_gets_its_backends_token_or_its_own_override() -> None:
    config = parse_config(
        {
            "backends": {"serverless": {"url": "http://127.0.0.1:1", "token_env": "SVC_TOKEN"}},
            "models": {"iris": {}, "wine": {"serverless": {"token_env": "OTHER_TOKEN"}}},
        },
        ENV,
    )
    sources = build_credentials(config).serverless
    assert sources["iris"] is not None
    assert sources["iris"].token() == "dapi-service"
    assert sources["wine"] is not None
    assert sources["wine"].token() == "dapi-other"


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
        },
        ENV,
    )
    credentials = build_credentials(config)
    assert credentials.serverless == {"iris": None, "wine": None}
    iris, wine = credentials.legacy["iris"], credentials.legacy["wine"]
    assert iris is not None
    assert wine is not None
    assert (iris.token(), wine.token()) == ("dapi-legacy", "dapi-other")


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
