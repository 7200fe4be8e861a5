"""Shared fixtures: the anyio backend, the corpus location, loopback simulators."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sim.app import create_simulator_app
from tests.redis_server import MISSING, RedisServer, available
from tests.secretwatch import SecretWatch
from tests.servers import LiveServer

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The recorded corpus lives beside the project root (../shared/corpus); never edited.
SHARED = PROJECT_ROOT.parent / "shared"
CORPUS = SHARED / "corpus"


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log_line() -> Iterator[SecretWatch]:
    """Every log record of the whole session, whatever logger and level, is checked for
    the secrets tests registered (tests/secretwatch.py); one that holds any fails the run."""
    watch = SecretWatch()
    root = logging.getLogger()
    root.addHandler(watch)
    try:
        yield watch
    finally:
        root.removeHandler(watch)
    assert not watch.leaks, f"secrets in {len(watch.leaks)} log records: {watch.leaks[:5]}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def serverless() -> Iterator[LiveServer]:
    """A new-protocol simulator (toy model) on a loopback port, one per test module."""
    with LiveServer(create_simulator_app("serverless")) as server:
        yield server


@pytest.fixture(scope="module")
def legacy() -> Iterator[LiveServer]:
    """A 1.x-protocol simulator (toy model) on a loopback port, one per test module."""
    with LiveServer(create_simulator_app("legacy")) as server:
        yield server


@pytest.fixture
def reset_simulators(serverless: LiveServer, legacy: LiveServer) -> None:
    """Clear both simulators' counters and fault knobs before a test."""
    for server in (serverless, legacy):
        httpx.post(server.url + "/_sim/reset").raise_for_status()
        httpx.put(server.url + "/_sim/faults", json={}).raise_for_status()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server on loopback for the module's tests (skipped where none is
    installed: scripts/test installs one)."""
    if not available():
        pytest.skip(MISSING)
    with RedisServer() as server:
        yield server.url
