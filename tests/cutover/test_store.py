"""One suite, run against SQLite and against a real redis-server."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest

from proxy.cutover import open_store
from proxy.cutover.redisstore import RedisStore
from proxy.cutover.sqlitestore import SqliteStore
from proxy.cutover.store import AuditEntry, StateError, StateStore

pytestmark = pytest.mark.anyio
_prefixes = itertools.count()


StoreFactory = Callable[[], StateStore]


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Builds stores that all see the same state (one file, or one Redis prefix)."""
    if request.param == "sqlite":
        path = str(tmp_path / "state.sqlite3")
        return lambda: SqliteStore(path)
    url = request.getfixturevalue("redis_url")
    prefix = f"test-{next(_prefixes)}"
    return lambda: RedisStore(url, prefix=prefix)


@pytest.fixture
async def store(factory: StoreFactory) -> AsyncIterator[StateStore]:
    s = factory()
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()


def entry(model: str = "iris", new: float = 25, reason: str = "test") -> AuditEntry:
    return AuditEntry(
        at=1.5,
        model=model,
        actor="ops",
        action="set",
        old=None,
        new={"serverless_percent": new},
        reason=reason,
    )


async def test_starts_empty(store: StateStore) -> None:
    assert await store.load() == {}
    assert await store.generation() == 0
    assert await store.audit() == []


async def test_write_then_load(store: StateStore) -> None:
    # The generation is only ever compared with itself: it moves on every write.
    seen = {await store.generation()}
    assert await store.write("iris", None, {"serverless_percent": 25}, entry())
    loaded = await store.load()
    assert loaded["iris"].revision == 1
    assert loaded["iris"].data == {"serverless_percent": 25}
    seen.add(await store.generation())
    assert await store.write("iris", 1, {"serverless_percent": 50}, entry(new=50))
    assert (await store.load())["iris"].revision == 2
    seen.add(await store.generation())
    assert len(seen) == 3


@pytest.mark.parametrize(
    ("expected", "why"),
    [(None, "exists-already"), (7, "stale-revision"), (0, "zero-is-not-absent")],
)
async def test_compare_and_set_refuses_and_keeps(
    store: StateStore, expected: int | None, why: str
) -> None:
    assert await store.write("iris", None, {"serverless_percent": 25}, entry())
    generation = await store.generation()
    assert not await store.write("iris", expected, {"serverless_percent": 99}, entry(new=99))
    assert (await store.load())["iris"].data == {"serverless_percent": 25}
    assert await store.generation() == generation
    assert len(await store.audit()) == 1


async def test_two_writers_one_wins(factory: StoreFactory) -> None:
    a, b = factory(), factory()
    await a.open()
    await b.open()
    try:
        assert await a.write("iris", None, {"v": 0}, entry())
        results: list[bool] = []

        async def write(s: StateStore, value: int) -> None:
            results.append(await s.write("iris", 1, {"v": value}, entry(new=value)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(write, a, 1)
            tg.start_soon(write, b, 2)
        assert sorted(results) == [False, True]
        assert (await b.load())["iris"].revision == 2
    finally:
        await a.aclose()
        await b.aclose()


async def test_audit_is_newest_first_and_filtered(store: StateStore) -> None:
    assert await store.write("iris", None, {"p": 1}, entry("iris", 1, "first"))
    assert await store.write("wine", None, {"p": 2}, entry("wine", 2, "second"))
    assert await store.write("iris", 1, {"p": 3}, entry("iris", 3, "third"))
    assert [e.reason for e in await store.audit()] == ["third", "second", "first"]
    assert [e.reason for e in await store.audit("iris")] == ["third", "first"]
    assert [e.reason for e in await store.audit(limit=1)] == ["third"]
    assert (await store.audit("iris"))[0] == entry("iris", 3, "third")


async def test_audit_keeps_where_a_change_was_made(store: StateStore) -> None:
    made = dataclasses.replace(entry(), replica="pod-a", fencing_token=7)
    assert await store.write("iris", None, {"p": 1}, made)
    assert await store.audit("iris") == [made]


def test_an_entry_stored_before_it_named_its_replica_still_reads() -> None:
    older = {k: v for k, v in entry().to_json().items() if k not in {"replica", "fencing_token"}}
    assert AuditEntry.from_json(older) == entry()
    assert AuditEntry.from_json({**older, "fencing_token": "7"}).fencing_token is None


async def test_survives_a_restart(factory: StoreFactory) -> None:
    first = factory()
    await first.open()
    assert await first.write("iris", None, {"serverless_percent": 25}, entry())
    await first.aclose()
    second = factory()
    await second.open()
    try:
        assert (await second.load())["iris"].data == {"serverless_percent": 25}
        assert len(await second.audit()) == 1
    finally:
        await second.aclose()


async def test_unwritable_sqlite_path() -> None:
    store = SqliteStore("/proc/serving-proxy/state.sqlite3")
    with pytest.raises(StateError, match="cannot open SQLite file"):
        await store.open()


async def test_unreachable_redis() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens there now.
    store = RedisStore(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(StateError, match="cannot reach"):
        await store.open()
    await store.aclose()


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        (None, SqliteStore),
        (":memory:", SqliteStore),
        ("/var/lib/x.sqlite3", SqliteStore),
        ("redis://127.0.0.1:6379/0", RedisStore),
        ("rediss://cache:6380/1", RedisStore),
    ],
)
def test_open_store_by_url(url: str | None, kind: type) -> None:
    assert isinstance(open_store(url), kind)


def test_open_store_refuses_other_schemes() -> None:
    with pytest.raises(StateError, match="not a store"):
        open_store("postgres://db/state")


# --- the gate windows' slots ----------------------------------------------------------


def slot(replica: str, index: int) -> dict[str, object]:
    return {"replica": replica, "index": index, "calls": index}


async def test_window_slots_are_shared_and_fetched_once(factory: StoreFactory) -> None:
    a, b = factory(), factory()
    await a.open()
    await b.open()
    try:
        await a.publish_window("iris", "a|5@1|100", 1000.0, slot("a", 100), 1010.0, 70.0)
        await b.publish_window("iris", "b|5@1|100", 1000.0, slot("b", 100), 1010.0, 70.0)
        await b.publish_window("iris", "b|5@1|101", 1010.0, slot("b", 101), 1020.0, 70.0)
        await b.publish_window("other", "b|5@1|101", 1010.0, slot("x", 0), 1020.0, 70.0)
        keys, records = await a.window_slots("iris", 1000.0, ())
        assert sorted(keys) == ["a|5@1|100", "b|5@1|100", "b|5@1|101"]
        assert records["b|5@1|101"] == slot("b", 101)
        # Known keys are listed, not fetched again; older slots are not listed.
        keys, records = await a.window_slots("iris", 1005.0, {"b|5@1|101"})
        assert (keys, records) == (["b|5@1|101"], {})
    finally:
        await a.aclose()
        await b.aclose()


async def test_window_slots_expire(store: StateStore) -> None:
    if isinstance(store, RedisStore):
        # Redis expires on its own clock (PEXPIRE): a short time to live, really waited.
        await store.publish_window("iris", "a|5@1|1", 0.0, slot("a", 1), 0.0, 0.2)
        await anyio.sleep(0.4)
    else:
        await store.publish_window("iris", "a|5@1|1", 0.0, slot("a", 1), 0.0, 70.0)
        # The next publication after the time to live takes the old one away.
        await store.publish_window("iris", "a|5@1|9", 80.0, slot("a", 9), 80.5, 70.0)
    keys, records = await store.window_slots("iris", 0.0, ())
    assert "a|5@1|1" not in keys
    assert "a|5@1|1" not in records
