"""The pools of one config: which upstream client builds them."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import parse_config
from proxy.upstream.aiohttp import AiohttpUpstream
from proxy.upstream.http1 import HttptoolsUpstream
from proxy.upstream.pools import Pools


def config(**server: Any) -> Any:
    return parse_config(
        {
            "backends": {
                "serverless": {"url": "http://127.0.0.1:5002"},
                "legacy": {"url": "http://127.0.0.1:5001"},
            },
            "models": {"iris": {}},
            "server": server,
        },
        {},
    )


@pytest.mark.parametrize(
    ("server", "client"),
    [
        ({}, HttptoolsUpstream),
        ({"upstream_client": "httptools"}, HttptoolsUpstream),
        ({"upstream_client": "aiohttp"}, AiohttpUpstream),
    ],
)
def test_the_configured_client_builds_every_pool(server: dict[str, str], client: type) -> None:
    built = Pools.build(config(**server))
    targets = built.targets["iris"]
    assert targets.legacy is not None
    pools = {built.primary(targets.serverless), built.primary(targets.legacy)}
    assert len(pools) == 2  # serverless and legacy, opened at build time
    assert {type(pool) for pool in pools} == {client}
    assert built.shadow(targets.serverless) not in pools  # shadow calls have their own
