"""Client labels: a keyed hash under one secret per deployment, configured or generated
once into the state store (SQLite file, in memory, real Redis) and shared by every process."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from proxy.app import create_app
from proxy.config import parse_config
from proxy.cutover.redisstore import RedisStore
from proxy.cutover.sqlitestore import SqliteStore
from proxy.cutover.store import StateError
from proxy.routing import ClientKey, hash_client_key, report_label
from proxy.telemetry.labels import ClientLabels

pytestmark = pytest.mark.anyio
_prefixes = itertools.count()
ADDRESS = ClientKey("address", "10.0.0.9", "10.0.0.9")


def test_a_label_is_keyed_so_the_address_cannot_be_recovered_without_the_secret() -> None:
    label = hash_client_key("10.0.0.9", b"a" * 32)
    assert len(label) == 12
    assert label == hash_client_key("10.0.0.9", b"a" * 32)
    assert label != hash_client_key("10.0.0.9", b"b" * 32)
    # The unkeyed digests an attacker would try over all of IPv4 give something else.
    unkeyed = hashlib.blake2b(b"10.0.0.9", digest_size=6, person=b"sp-client").hexdigest()
    assert label not in (unkeyed, hashlib.sha256(b"10.0.0.9").hexdigest()[:12])


def test_a_header_key_is_shown_only_when_the_config_says_so() -> None:
    key = ClientKey("header", "billing", "10.0.0.9")
    assert report_label(key, b"s", show_header=True) == "billing"
    assert report_label(key, b"s") == hash_client_key("billing", b"s")


def test_without_a_configured_secret_each_process_has_its_own() -> None:
    one, two = ClientLabels(None), ClientLabels(None)
    assert one(ADDRESS) != two(ADDRESS)
    assert repr(one) == "ClientLabels(configured=False, show_header=False)"


def config(tmp_path: Path, environ: dict[str, str] | None = None, **reporting: Any) -> Any:
    doc = {
        "backends": {"serverless": {"url": "http://127.0.0.1:1"}},
        "models": {"iris": {}},
        "state": str(tmp_path / "state.sqlite3"),
        "reporting": reporting,
    }
    return parse_config(doc, environ or {})


def test_the_configured_secret_keys_the_labels(tmp_path: Path) -> None:
    labels = ClientLabels.from_config(
        config(tmp_path, {"LABEL_KEY": "k" * 40}, label_key_env="LABEL_KEY")
    )
    assert labels.configured
    assert labels(ADDRESS) == hash_client_key("10.0.0.9", b"k" * 40)


async def test_every_process_on_one_state_file_gets_the_same_secret(tmp_path: Path) -> None:
    path = str(tmp_path / "state.sqlite3")
    secrets: list[bytes] = []

    async def one() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            secrets.append(await store.deployment_secret())
        finally:
            await store.aclose()

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(one)
    assert len(secrets[0]) == 32
    assert set(secrets) == {secrets[0]}


async def test_an_in_memory_store_keeps_its_secret() -> None:
    store = SqliteStore(":memory:")
    await store.open()
    try:
        assert await store.deployment_secret() == await store.deployment_secret()
    finally:
        await store.aclose()


@pytest.mark.redis
async def test_every_replica_on_one_redis_gets_the_same_secret(redis_url: str) -> None:
    prefix = f"labels-{next(_prefixes)}"
    stores = [RedisStore(redis_url, prefix=prefix) for _ in range(3)]
    secrets: list[bytes] = []

    async def one(store: RedisStore) -> None:
        await store.open()
        secrets.append(await store.deployment_secret())

    try:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(one, store)
    finally:
        for store in stores:
            await store.aclose()
    assert len(secrets) == 3
    assert len(secrets[0]) == 32
    assert set(secrets) == {secrets[0]}


class Unreachable:
    async def deployment_secret(self) -> bytes:
        raise StateError("state: redis://127.0.0.1:1/0: refused")


async def test_a_store_that_cannot_answer_keeps_the_process_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    labels = ClientLabels(None)
    before = labels(ADDRESS)
    await labels.adopt(Unreachable())
    assert labels(ADDRESS) == before
    assert "keyed by this process only" in caplog.text


async def test_a_configured_secret_is_never_replaced_by_the_stores() -> None:
    labels = ClientLabels(b"configured")
    await labels.adopt(Unreachable())  # not even asked
    assert labels(ADDRESS) == hash_client_key("10.0.0.9", b"configured")


async def test_two_apps_on_one_state_file_label_a_client_alike(tmp_path: Path) -> None:
    """Two replicas (or workers): same client, same label, and not the unkeyed hash."""
    labels: list[str | None] = []
    for _ in range(2):
        app = create_app(config(tmp_path))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app, client=("10.0.0.9", 5))
            async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
                await client.get("/healthz")
        labels.append(app.state.reporting.labels(ADDRESS))
    store = SqliteStore(str(tmp_path / "state.sqlite3"))
    await store.open()
    try:
        secret = await store.deployment_secret()
    finally:
        await store.aclose()
    assert labels == [hash_client_key("10.0.0.9", secret)] * 2
