"""The live table: seeded from the config, and the hot-path decision over it."""

from __future__ import annotations

import pytest

from proxy.models import Backend, ModelRef
from proxy.routing import ClientKey
from tests.cutover.factory import Factory, config

pytestmark = pytest.mark.anyio


async def test_seeds_from_the_config(make: Factory) -> None:
    cutover = await make()
    assert cutover.weight("iris") == 10
    assert cutover.table["iris"].serverless_percent == 10
    (entry,) = await cutover.history("iris")
    assert (entry.actor, entry.action, entry.old) == ("config", "seed", None)


@pytest.mark.parametrize(
    ("route", "percent"),
    [({"route": "legacy"}, 0), ({"route": "serverless"}, 100), ({}, 100)],
)
async def test_route_is_shorthand_for_0_or_100(
    make: Factory, route: dict[str, str], percent: float
) -> None:
    cutover = await make(config({"iris": route}))
    assert cutover.weight("iris") == percent


IRIS = ModelRef("iris", "1", "1", "iris")


async def test_decide_is_sticky_and_honours_only_listed_overrides(make: Factory) -> None:
    cfg = config(
        {"iris": {"serverless_percent": 50}},
        client_key={"header": "X-Client-Id", "address": False},
        route_override={"clients": ["10.0.0.7"]},
    )
    cutover = await make(cfg)
    c17 = ClientKey("header", "c-17", identity="10.0.0.9")
    qa = ClientKey("header", "c-17", identity="10.0.0.7")
    sticky = {cutover.decide(IRIS, c17, []).primary for _ in range(50)}
    assert len(sticky) == 1
    decision = cutover.decide(IRIS, qa, [("x-serving-proxy-route", "legacy")])
    assert (decision.primary, decision.reason) == (Backend.LEGACY, "override")
    decision = cutover.decide(IRIS, c17, [("x-serving-proxy-route", "legacy")])
    assert decision.reason == "weight"
    # A header's value is the client's own choice: naming a listed client in it is no proof.
    spoof = ClientKey("header", "10.0.0.7")
    assert cutover.decide(IRIS, spoof, [("x-serving-proxy-route", "legacy")]).reason != "override"
