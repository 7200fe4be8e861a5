"""Which client keys still call each model through the legacy protocol.

Memory only: no I/O, no logging; the caller passes the clock. Bounded per model, so a
flood of new keys cannot grow it without limit; the totals always add up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.protocol.paths import UrlKind, scoring_url
from proxy.telemetry.record import ExchangeRecord

DEFAULT_CLIENT_TOP_N = 20
# Exact counts are kept for this many client keys per model before the smallest go to
# `other`: enough head-room that the top N is stable under churn.
CLIENT_CAPACITY_FACTOR = 8
OTHER = "other"
# What a legacy request's format is counted as when the proxy detected none: the body went
# to the legacy side untouched (protocols.md §1.4, §8.1).
PASSTHROUGH = "passthrough"


def is_legacy_client(record: ExchangeRecord) -> bool:
    """Did this request come in on the 1.x URL (`/model/<name>/<v>/invocations`, §1.2)?

    Such a client must still be migrated, whatever body format it sent and wherever the
    proxy routed it.
    """
    if record.model is None:
        return False
    url = scoring_url(record.path)
    return url is not None and url.kind is UrlKind.LEGACY


@dataclass(slots=True)
class ClientEntry:
    """One client key's legacy use of one model, counted exactly since it was (re)admitted."""

    requests: int = 0
    last_seen: float = 0.0
    formats: dict[str, int] = field(default_factory=dict)
    # Who `client_auth` proved the key's client to be: a name a migration report may show
    # (a tokens-file name or a workspace principal), while `key` stays a keyed hash.
    identity: str | None = None


class ClientInventory:
    """Which client keys still call each model through the legacy protocol.

    Bounded: per model, exact counts for at most `top_n × CLIENT_CAPACITY_FACTOR` keys;
    when full, the key with the fewest requests is folded into `other` to make room, so a
    key that calls often is always named, and the totals always add up.
    """

    def __init__(self, top_n: int = DEFAULT_CLIENT_TOP_N) -> None:
        self.top_n = top_n
        self.capacity = top_n * CLIENT_CAPACITY_FACTOR
        self._models: dict[str, dict[str, ClientEntry]] = {}
        self._other: dict[str, ClientEntry] = {}
        self._top: dict[str, frozenset[str]] = {}

    def saw(
        self, model: str, key: str, legacy_format: str, now: float, identity: str | None = None
    ) -> None:
        """Count one legacy-protocol request of `key` (proven as `identity`) to `model`."""
        entries = self._models.setdefault(model, {})
        entry = entries.get(key)
        if entry is None:
            if len(entries) >= self.capacity:
                self._evict(model, entries)
            entry = entries[key] = ClientEntry()
        entry.requests += 1
        entry.last_seen = now
        if identity is not None:
            entry.identity = identity
        entry.formats[legacy_format] = entry.formats.get(legacy_format, 0) + 1
        top = self._top.get(model)
        if top is None or (key not in top and len(top) < self.top_n):
            self._top[model] = frozenset(k for k, _ in self.ranked(model)[: self.top_n])

    def _evict(self, model: str, entries: dict[str, ClientEntry]) -> None:
        victim = min(entries, key=lambda k: (entries[k].requests, entries[k].last_seen))
        gone = entries.pop(victim)
        _fold(self._other.setdefault(model, ClientEntry()), gone)

    def refresh_top(self) -> None:
        """Re-rank every model's named keys (once per slot: ranking is O(keys))."""
        for model in self._models:
            self._top[model] = frozenset(k for k, _ in self.ranked(model)[: self.top_n])

    def label(self, model: str, key: str) -> str:
        """`key` if it is among the model's top N at the last ranking, else `other`."""
        return key if key in self._top.get(model, frozenset()) else OTHER

    def ranked(self, model: str) -> list[tuple[str, ClientEntry]]:
        entries = self._models.get(model, {})
        return sorted(entries.items(), key=lambda kv: (-kv[1].requests, kv[0]))

    def models(self) -> Iterable[str]:
        return self._models.keys()

    def report(self, model: str, peers: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
        """The top N keys, then `other` (everything else), most requests first.

        `peers` are other workers' `export()`s: their counts are added key by key.
        """
        entries = {key: _copy(entry) for key, entry in self._models.get(model, {}).items()}
        rest = _copy(self._other.get(model, ClientEntry()))
        for peer in peers:
            data = peer.get(model)
            if data is None:
                continue
            for key, requests, last_seen, formats, *identity in data["entries"]:
                _fold(
                    entries.setdefault(key, ClientEntry()),
                    ClientEntry(requests, last_seen, formats, *identity),
                )
            requests, last_seen, formats = data["other"]
            _fold(rest, ClientEntry(requests, last_seen, formats))
        ranked = sorted(entries.items(), key=lambda kv: (-kv[1].requests, kv[0]))
        rows = [_client_row(key, entry) for key, entry in ranked[: self.top_n]]
        for _, entry in ranked[self.top_n :]:
            _fold(rest, entry)
        if rest.requests:
            rows.append(_client_row(OTHER, rest))
        return rows

    def export(self) -> dict[str, Any]:
        """Every count, JSON-ready, for another worker's `report(peers=...)`."""
        out: dict[str, Any] = {}
        for model, entries in self._models.items():
            other = self._other.get(model, ClientEntry())
            out[model] = {
                "entries": [
                    [k, e.requests, e.last_seen, e.formats, e.identity] for k, e in entries.items()
                ],
                "other": [other.requests, other.last_seen, other.formats],
            }
        return out


def _copy(entry: ClientEntry) -> ClientEntry:
    return ClientEntry(entry.requests, entry.last_seen, dict(entry.formats), entry.identity)


def _fold(into: ClientEntry, entry: ClientEntry) -> None:
    into.requests += entry.requests
    into.last_seen = max(into.last_seen, entry.last_seen)
    for fmt, count in entry.formats.items():
        into.formats[fmt] = into.formats.get(fmt, 0) + count
    if entry.identity is not None:
        into.identity = entry.identity


def _client_row(key: str, entry: ClientEntry) -> dict[str, Any]:
    return {
        "client": key,
        "identity": entry.identity,
        "requests": entry.requests,
        "last_seen": entry.last_seen,
        "formats": dict(sorted(entry.formats.items())),
    }
