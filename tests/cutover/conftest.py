"""The `make` fixture: started Cutovers on one SQLite file, closed after the test."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.config import ProxyConfig
from proxy.cutover import Cutover
from proxy.cutover.sqlitestore import SqliteStore
from tests.cutover.factory import Clock, Factory, config


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[Cutover] = []

    async def build(cfg: ProxyConfig | None = None, clock: Clock | None = None) -> Cutover:
        cutover = Cutover(
            cfg or config(),
            SqliteStore(str(tmp_path / "state.sqlite3")),
            clock=clock or Clock(),
            rng=random.Random(0),
            poll_s=3600,  # tests drive refresh() and tick() themselves
        )
        await cutover.start()
        made.append(cutover)
        return cutover

    yield build
    for cutover in made:
        await cutover.aclose()
