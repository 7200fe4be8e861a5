"""Shared fixtures: the anyio backend and the corpus location."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The recorded corpus lives beside the project root (../shared/corpus); never edited.
SHARED = PROJECT_ROOT.parent / "shared"
CORPUS = SHARED / "corpus"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
