"""Routing as pure functions: edge tables and hypothesis properties."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.cutover import ClientKeyConfig
from proxy.errors import UnknownModel
from proxy.models import Backend, ModelRef
from proxy.routing import (
    BUCKETS,
    ClientKey,
    Weights,
    bucket_of,
    client_key,
    decide,
    override_of,
    threshold,
)

IRIS = ModelRef(name="iris", requested="1", version="1", endpoint="iris")
KEYS = st.text(min_size=1, max_size=40)
PERCENTS = st.floats(min_value=0, max_value=100, allow_nan=False)


def route(percent: float, key: str | None, *, shadow: float = 0.0, seed: int = 0) -> Backend:
    table = {"iris": Weights(percent, shadow)}
    k = None if key is None else ClientKey("header", key)
    return decide(table, IRIS, k, random.Random(seed)).primary


@pytest.mark.parametrize(
    ("percent", "key", "expected"),
    [
        pytest.param(0, "alice", Backend.LEGACY, id="zero-keyed"),
        pytest.param(0, None, Backend.LEGACY, id="zero-no-key"),
        pytest.param(100, "alice", Backend.SERVERLESS, id="hundred-keyed"),
        pytest.param(100, None, Backend.SERVERLESS, id="hundred-no-key"),
        pytest.param(0.0, "", Backend.LEGACY, id="zero-empty-key"),
    ],
)
def test_edges(percent: float, key: str | None, expected: Backend) -> None:
    for seed in range(20):
        assert route(percent, key, seed=seed) is expected


def test_unknown_model_is_not_served() -> None:
    with pytest.raises(UnknownModel):
        decide({}, IRIS, None, random.Random(0))


def test_a_model_without_legacy_is_always_serverless_and_never_shadowed() -> None:
    table = {"iris": Weights(0, 100, has_legacy=False)}
    decision = decide(table, IRIS, ClientKey("header", "a"), random.Random(0))
    assert (decision.primary, decision.shadow, decision.reason) == (
        Backend.SERVERLESS,
        None,
        "only-serverless",
    )


@pytest.mark.parametrize(
    ("percent", "expected"),
    [(0, 0), (0.01, 1), (1, 100), (25, 2500), (33.33, 3333), (100, BUCKETS)],
)
def test_threshold(percent: float, expected: int) -> None:
    assert threshold(percent) == expected


def test_bucket_is_stable_across_processes() -> None:
    # Pinned: a change here would reshuffle every client of every running deployment.
    assert [bucket_of(k) for k in ("alice", "bob", "10.0.0.7")] == [4729, 9842, 5156]


def test_shadow_goes_to_the_other_backend() -> None:
    table = {"iris": Weights(100, 100)}
    decision = decide(table, IRIS, ClientKey("header", "a"), random.Random(0))
    assert (decision.primary, decision.shadow) == (Backend.SERVERLESS, Backend.LEGACY)
    table = {"iris": Weights(0, 100)}
    decision = decide(table, IRIS, ClientKey("header", "a"), random.Random(0))
    assert (decision.primary, decision.shadow) == (Backend.LEGACY, Backend.SERVERLESS)


def test_shadow_share_is_drawn_per_request() -> None:
    table = {"iris": Weights(0, 10)}
    rng = random.Random(7)
    shadowed = sum(
        decide(table, IRIS, ClientKey("header", "a"), rng).shadow is not None for _ in range(10_000)
    )
    assert 850 <= shadowed <= 1150


def test_no_key_requests_are_split_per_request_by_weight() -> None:
    table = {"iris": Weights(30)}
    rng = random.Random(3)
    decisions = [decide(table, IRIS, None, rng) for _ in range(10_000)]
    share = sum(d.primary is Backend.SERVERLESS for d in decisions) / 100
    assert 28.5 <= share <= 31.5
    assert {d.reason for d in decisions} == {"no-key"}
    assert {d.bucket for d in decisions} == {None}


# --- client keys and the override header -----------------------------------------------------


@pytest.mark.parametrize(
    ("config", "headers", "host", "expected"),
    [
        pytest.param(
            ClientKeyConfig(header="x-client-id"),
            [(b"x-client-id", b"team-a")],
            "127.0.0.1",
            ClientKey("header", "team-a", "127.0.0.1"),
            id="header",
        ),
        pytest.param(
            ClientKeyConfig(header="x-client-id"),
            [],
            "127.0.0.1",
            ClientKey("address", "127.0.0.1", "127.0.0.1"),
            id="header-missing-falls-to-address",
        ),
        pytest.param(
            ClientKeyConfig(header="x-client-id", address=False),
            [(b"x-client-id", b"  ")],
            "127.0.0.1",
            None,
            id="blank-header-no-address",
        ),
        pytest.param(
            ClientKeyConfig(address=False),
            [(b"x-client-id", b"team-a")],
            "127.0.0.1",
            None,
            id="nothing-enabled",
        ),
        pytest.param(
            ClientKeyConfig(),
            [],
            None,
            None,
            id="no-peer-address",
        ),
    ],
)
def test_client_key_sources(
    config: ClientKeyConfig,
    headers: list[tuple[bytes, bytes]],
    host: str | None,
    expected: ClientKey | None,
) -> None:
    assert client_key(headers, host, config) == expected


def test_authorization_key_is_a_digest_never_the_token() -> None:
    config = ClientKeyConfig(authorization=True, address=False)
    key = client_key([(b"authorization", b"Bearer s3cret-token")], None, config)
    assert key is not None
    assert key.source == "authorization"
    assert "s3cret" not in key.value
    assert len(key.value) == 32
    again = client_key([(b"authorization", b"Bearer s3cret-token")], None, config)
    assert again == key


QA_HOST = "10.9.9.9"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        pytest.param(
            ClientKey("address", QA_HOST, QA_HOST), "serverless", Backend.SERVERLESS, id="allowed"
        ),
        pytest.param(ClientKey("address", QA_HOST, QA_HOST), "LEGACY", Backend.LEGACY, id="case"),
        pytest.param(ClientKey("address", QA_HOST, QA_HOST), "both", None, id="bad-value"),
        pytest.param(
            ClientKey("address", "10.0.0.1", "10.0.0.1"), "serverless", None, id="not-listed"
        ),
        pytest.param(None, "serverless", None, id="no-key"),
        # The bucket key came from a header, but the identity is still the address.
        pytest.param(
            ClientKey("header", "bob", QA_HOST), "serverless", Backend.SERVERLESS, id="by-address"
        ),
        # A client-chosen header naming a listed value is never an identity.
        pytest.param(ClientKey("header", QA_HOST, "10.0.0.1"), "serverless", None, id="spoof"),
        pytest.param(ClientKey("header", QA_HOST), "serverless", None, id="no-identity"),
        pytest.param(
            ClientKey("authorization", QA_HOST, "10.0.0.1"), "serverless", None, id="auth-digest"
        ),
    ],
)
def test_override(key: ClientKey | None, value: str, expected: Backend | None) -> None:
    assert override_of([("x-serving-proxy-route", value)], key, {QA_HOST}) is expected


def test_an_override_listed_by_header_value_is_refused_end_to_end() -> None:
    """`client_key.header` lets any client name itself; the override asks who it is."""
    config = ClientKeyConfig(header="x-client-id")
    spoofed = client_key([(b"x-client-id", b"qa-team")], "203.0.113.7", config)
    route = [("x-serving-proxy-route", "serverless")]
    assert override_of(route, spoofed, {"qa-team"}) is None
    listed = client_key([(b"x-client-id", b"anything")], "10.9.9.9", config)
    assert override_of(route, listed, {"10.9.9.9"}) is Backend.SERVERLESS


def test_override_beats_the_weight() -> None:
    table = {"iris": Weights(0)}
    decision = decide(
        table, IRIS, ClientKey("header", "qa"), random.Random(0), override=Backend.SERVERLESS
    )
    assert (decision.primary, decision.reason) == (Backend.SERVERLESS, "override")


# --- properties --------------------------------------------------------------------------------


@given(key=KEYS, percent=PERCENTS, seeds=st.tuples(st.integers(), st.integers()))
def test_same_key_same_backend(key: str, percent: float, seeds: tuple[int, int]) -> None:
    assert route(percent, key, seed=seeds[0]) is route(percent, key, seed=seeds[1])


@given(key=KEYS, low=PERCENTS, high=PERCENTS)
def test_monotonic_in_the_weight(key: str, low: float, high: float) -> None:
    low, high = min(low, high), max(low, high)
    if route(low, key) is Backend.SERVERLESS:
        assert route(high, key) is Backend.SERVERLESS


@settings(max_examples=10, deadline=None)
@given(percent=PERCENTS, salt=st.text(max_size=8))
def test_share_over_ten_thousand_keys(percent: float, salt: str) -> None:
    keys = [f"{salt}client-{i}" for i in range(10_000)]
    served = sum(route(percent, k) is Backend.SERVERLESS for k in keys)
    assert abs(served / 100 - percent) <= 1.5
