"""The suite's secrets, and a watch over every log line the suite makes for them.

Tests register each secret they hand the proxy (tokens, client secrets, the tokens the
local OAuth server issues) with `secret`; `SecretWatch`, installed on the root logger
for the whole session by conftest.py, checks every record any test logs (message and
traceback alike) against them, so a secret logged by a test that never looked is still
caught. A test that reads a metric or an admin answer checks it itself
(`assert_no_known_secret`).
"""

from __future__ import annotations

import logging
import threading

KNOWN: set[str] = set()
# The tests' own HTTP clients log each URL they were asked for, and a test sends a token in
# a query string on purpose, to see it refused: what a client sent is not the proxy's output.
CLIENT_LOGGERS = frozenset({"httpx"})
_lock = threading.Lock()


def secret(value: str) -> str:
    """Register `value` as a secret no output may hold; returns it."""
    with _lock:
        KNOWN.add(value)
    return value


def found_in(text: str) -> list[str]:
    """The known secrets in `text`, shown by their first four characters only."""
    with _lock:
        known = tuple(KNOWN)
    return sorted(f"{value[:4]}…" for value in known if value in text)


def assert_no_known_secret(text: str) -> None:
    leaked = found_in(text)
    assert not leaked, f"secrets in the output: {leaked}"


class SecretWatch(logging.Handler):
    """Remembers (logger, secret prefix) for each record that holds a known secret."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.leaks: list[tuple[str, list[str]]] = []
        self.records = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name in CLIENT_LOGGERS:
            return
        self.records += 1
        try:
            text = self.format(record)
        except Exception:  # a record that cannot format is not this watch's to judge
            return
        leaked = found_in(text)
        if leaked:
            self.leaks.append((record.name, leaked))
