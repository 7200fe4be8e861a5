"""Every query parameter the admin API reads is checked: a bad one is a 400 in the admin
shape, never a 500 (`int` and `str.isdigit` take digits no client means, such as "²")."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.admin.test_api import AUTH, make_config, proxy
from tests.servers import LiveServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]
PATHS = ["/admin/models/iris/history", "/admin/audit"]


@pytest.fixture
async def client(serverless: LiveServer, legacy: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with proxy(make_config(serverless, legacy)) as c:
        yield c


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "limit",
    ["²", "٣", "１０", "-1", "0", "1001", "9" * 5000, "1e3", " 5", "5 ", "+5", "0x10", "", "five"],
)
async def test_a_bad_limit_is_a_400(client: httpx.AsyncClient, path: str, limit: str) -> None:
    r = await client.get(path, params={"limit": limit}, headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json() == {
        "error": "bad_request",
        "message": "limit must be an integer from 1 to 1000",
    }


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("limit", ["1", "0005", "1000"])
async def test_a_good_limit_is_read(client: httpx.AsyncClient, path: str, limit: str) -> None:
    r = await client.get(path, params={"limit": limit}, headers=AUTH)
    assert r.status_code == 200, r.text
