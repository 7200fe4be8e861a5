"""The live objects of one app: which upstream client builds the pools."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import parse_config
from proxy.http1 import HttptoolsUpstream
from proxy.runtime import Runtime
from proxy.upstream import AiohttpUpstream


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
    runtime = Runtime.build(config(**server))
    pools = list(runtime.upstreams.values())
    assert len(pools) == 2  # serverless and legacy
    assert {type(pool) for pool in pools} == {client}
