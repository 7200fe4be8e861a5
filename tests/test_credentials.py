"""Where each model's injected token comes from (§7.1 `inject` vs `passthrough`)."""

from __future__ import annotations

from proxy.config import parse_config
from proxy.credentials import StaticToken, build_credentials

ENV = {"SVC_TOKEN": "dapi-service", "OTHER_TOKEN": "dapi-other"}


def test_each_model_gets_its_backends_token_or_its_own_override() -> None:
    config = parse_config(
        {
            "backends": {"serverless": {"url": "http://127.0.0.1:1", "token_env": "SVC_TOKEN"}},
            "models": {"iris": {}, "wine": {"serverless": {"token_env": "OTHER_TOKEN"}}},
        },
        ENV,
    )
    sources = build_credentials(config)
    assert sources["iris"] is not None
    assert sources["iris"].token() == "dapi-service"
    assert sources["wine"] is not None
    assert sources["wine"].token() == "dapi-other"


def test_no_token_env_passes_the_clients_authorization_through() -> None:
    config = parse_config(
        {"backends": {"serverless": {"url": "http://127.0.0.1:1"}}, "models": {"iris": {}}}, {}
    )
    assert build_credentials(config) == {"iris": None}


def test_a_token_never_shows_in_a_repr() -> None:
    assert "dapi" not in repr(StaticToken("dapi-service"))
    assert "dapi" not in repr({"iris": StaticToken("dapi-service")})
