"""Who may read the state: SQLite files 0600, and the Redis password from the environment."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.config import parse_config
from proxy.cutover import Cutover
from proxy.cutover.sqlitestore import SqliteStore
from proxy.cutover.store import StateError
from tests.redis_server import MISSING, RedisServer, available

pytestmark = pytest.mark.anyio


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
async def test_sqlite_files_are_created_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.sqlite3"
    store = SqliteStore(str(path))
    await store.open()
    try:
        files = sorted(path.parent.iterdir())
        assert {p.name for p in files} >= {
            "state.sqlite3",
            "state.sqlite3-wal",
            "state.sqlite3-shm",
        }
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        await store.aclose()


async def test_an_existing_looser_state_file_is_tightened_and_said_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.sqlite3"
    path.touch()
    path.chmod(0o644)
    store = SqliteStore(str(path))
    with caplog.at_level(logging.WARNING, "serving_proxy.cutover"):
        await store.open()
    await store.aclose()
    assert mode(path) == 0o600
    assert "was mode 0644; now 0600" in caplog.text


@pytest.mark.redis
async def test_the_redis_password_comes_from_redis_password_env() -> None:
    if not available():
        pytest.skip(MISSING)
    secret = "redis-pass-0123456789abcdef"
    with RedisServer(password=secret) as server:
        doc = {
            "backends": {"serverless": {"url": "http://127.0.0.1:9"}},
            "models": {"iris": {}},
            "state": server.url,
            "redis": {"password_env": "STATE_REDIS_PASSWORD"},
        }
        cutover = Cutover(parse_config(doc, {"STATE_REDIS_PASSWORD": secret}))
        await cutover.start()
        try:
            assert cutover.weight("iris") == 100
        finally:
            await cutover.aclose()
        # Without it the server refuses, and start-up says which store.
        refused = Cutover(parse_config({**doc, "redis": {}}, {}))
        with pytest.raises(StateError, match=f"127.0.0.1:{server.port}"):
            await refused.start()
        await refused.aclose()
