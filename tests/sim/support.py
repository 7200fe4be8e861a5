"""What several simulator test modules share: sample frames, clients, the corpus guard."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from sim.corpus import DEFAULT_CORPUS, Side, get_case
from tests.servers import LiveServer

CORPUS = DEFAULT_CORPUS
needs_corpus = pytest.mark.skipif(
    not any((CORPUS / "cases").glob("*.json")), reason=f"no corpus at {CORPUS}"
)

Connect = Callable[[Starlette], Awaitable[httpx.AsyncClient]]

# One frame in each request shape; the toy model answers EXPECTED for every one of them.
SPLIT = {"columns": ["a", "b", "c"], "data": [[1, 2, 3], [4.5, None, 1]]}
RECORDS = [{"a": 1, "b": 2, "c": 3}, {"a": 4.5, "b": None, "c": 1}]
CSV = "a,b,c\n1,2,3\n4.5,,1\n"
EXPECTED = [6.0, math.nan]


def assert_predictions(actual: Any, expected: list[float]) -> None:
    assert isinstance(actual, list)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got == want or (math.isnan(got) and math.isnan(want))


def body_of(response: httpx.Response) -> Any:
    return json.loads(response.text)  # the stdlib reads bare NaN, as MLflow clients do


@contextlib.asynccontextmanager
async def live_client(app: Starlette, **config: Any) -> AsyncIterator[httpx.AsyncClient]:
    with LiveServer(app, **config) as server:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
            yield client


def recorded_side(case_id: str, side: str) -> Side:
    """One side (`legacy`, `v2`, `v3`) of a corpus case, which must have it."""
    found = get_case(case_id, CORPUS).side(side)
    assert found is not None, f"{case_id} has no {side} side"
    return found
