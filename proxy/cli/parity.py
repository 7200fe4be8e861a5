"""Parity of recorded answers: each pair replayed through the translation and judged.

The work behind `serving-proxy verify` (`proxy.cli.verify`, the command). Each pair
(`proxy.telemetry.recorder`: a recorded legacy request and the answer the legacy side gave
it) is sent through the proxy's own translation to the model's serverless endpoint as
`serve` would send it: `exchange.send` with the config's pools and credentials, over real
HTTP. The translated answer is compared with the recorded one by the shadow comparison
(`proxy.compare`) under the model's `compare:` rules, so `verify` and a live shadow judge
alike. Judging, counting and formatting are pure; `verify_pairs` is the I/O.

Each pair ends as one of:

- `equal`: the statuses agree and, for a success, the bodies agree within the tolerances;
- `differs`: another status, or the first differing path of the body (`$[3].label`);
- `error`: no answer to compare: the endpoint unreachable, timed out or not speaking HTTP,
  or answering a status that says it is unavailable (401, 403, 429, 502, 503, 504) where
  the legacy side answered otherwise: that is no verdict on the translation.

A request the proxy itself refuses (a body 1.x would have refused too) is compared as the
local reply a client would get (§6.1), as a shadow call does. Only the comparison's short
values are kept, never whole bodies, and no header.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from proxy import exchange
from proxy.compare import Answer, Comparison, Tolerance, Verdict, compare
from proxy.config import ProxyConfig
from proxy.credentials import build_credentials
from proxy.errors import ProxyError, UnknownModel, render
from proxy.models import Backend, Reply
from proxy.protocol.paths import resolve_legacy
from proxy.shadow.mirror import CALL_FAILURES, answer_of
from proxy.telemetry.recorder import Pair
from proxy.upstream.pools import Pools

Result = Literal["equal", "differs", "error"]
# Answers that say the endpoint could not serve the request (auth, rate limit, a replica
# starting, a gateway): where the legacy side answered otherwise there is no verdict.
UNAVAILABLE_STATUSES = frozenset({401, 403, 429, 502, 503, 504})
ID_WIDTH = 36


@dataclass(frozen=True, slots=True)
class Row:
    """One pair's outcome. `path` is the first differing field (`$[0]`), `status` for a
    status difference, None otherwise; `recorded` and `translated` the two values there
    (short: `proxy.compare` cuts long strings and describes containers)."""

    line: int
    id: str
    request_id: str | None
    result: Result
    recorded_status: int
    status: int | None = None
    path: str | None = None
    recorded: Any = None
    translated: Any = None
    detail: str | None = None

    def describe(self) -> str:
        """The table's last column: where it differs, or why there is no answer."""
        if self.result == "equal":
            return ""
        if self.result == "error":
            return self.detail or ""
        where = self.path or "$"
        text = f"{where}: {self.recorded!r} recorded, {self.translated!r} translated"
        return f"{text} ({self.detail})" if self.detail else text


@dataclass(frozen=True, slots=True)
class Summary:
    total: int
    equal: int
    differs: int
    error: int
    parity: float
    min_parity: float
    # Lines of the file that were not this model's pairs, and lines without an answer.
    other_models: int
    unanswered: int

    @property
    def passed(self) -> bool:
        return self.parity >= self.min_parity


def judge(pair: Pair, reply: Reply, tolerance: Tolerance) -> Row:
    """The row of a pair whose request got `reply` (in the legacy client's form). Pure."""
    recorded = pair.answer
    base = Row(pair.line, pair.id, pair.request_id, "equal", recorded.status, reply.status)
    if reply.status != recorded.status and reply.status in UNAVAILABLE_STATUSES:
        return _replace(base, result="error", detail=f"the endpoint answered {reply.status}")
    result: Comparison = compare(
        Answer(recorded.status, recorded.body), answer_of(reply), tolerance
    )
    if result.matched:
        return base
    path = "status" if result.verdict is Verdict.STATUS else result.path
    return _replace(
        base,
        result="differs",
        path=path,
        recorded=result.primary,
        translated=result.shadow,
        detail=result.detail,
    )


def failed(pair: Pair, detail: str) -> Row:
    """The row of a pair that got no answer to compare. Pure."""
    return Row(pair.line, pair.id, pair.request_id, "error", pair.answer.status, detail=detail)


def _replace(row: Row, **changes: Any) -> Row:
    return Row(**{**asdict(row), **changes})


def summarize(
    rows: Sequence[Row], min_parity: float, other_models: int, unanswered: int
) -> Summary:
    """The counts and the share of equal answers (1.0 for no rows: nothing differs). Pure."""
    counts = {result: sum(row.result == result for row in rows) for result in ("equal", "differs")}
    total = len(rows)
    parity = counts["equal"] / total if total else 1.0
    return Summary(
        total,
        counts["equal"],
        counts["differs"],
        total - counts["equal"] - counts["differs"],
        parity,
        min_parity,
        other_models,
        unanswered,
    )


def format_table(rows: Sequence[Row]) -> Iterator[str]:
    """One line per pair: its line in the file, its id, the result and where or why. Pure."""
    header = f"{'line':>6}  {'id':<{ID_WIDTH}}  {'result':<7}  first difference / error"
    yield header
    yield "-" * len(header)
    for row in rows:
        shown = row.request_id or row.id
        if len(shown) > ID_WIDTH:
            shown = shown[: ID_WIDTH - 1] + "…"
        yield f"{row.line:>6}  {shown:<{ID_WIDTH}}  {row.result:<7}  {row.describe()}".rstrip()


def format_summary(summary: Summary) -> str:
    verdict = "ok" if summary.passed else "FAILED"
    return (
        f"summary: {summary.equal} equal, {summary.differs} differs, {summary.error} error "
        f"of {summary.total} pairs; parity {summary.parity:.4f} "
        f"(min {summary.min_parity:.4f}): {verdict}"
    )


def report(model: str, pairs_file: Path, rows: Sequence[Row], summary: Summary) -> dict[str, Any]:
    """The `--report` document: every row and the summary. Pure."""
    return {
        "model": model,
        "pairs": str(pairs_file),
        "rows": [asdict(row) for row in rows],
        "summary": {**asdict(summary), "passed": summary.passed},
    }


# --- the run --------------------------------------------------------------------------------


def _inbound(pair: Pair, config: ProxyConfig) -> exchange.Inbound:
    """The recorded request as the proxy would have read it: its body and Content-Type,
    no other header (none was recorded).

    Raises:
        UnknownModel: the config does not serve the pair's model version.
    """
    ref = resolve_legacy(config.models, pair.model, pair.version)
    headers = [] if pair.content_type is None else [("content-type", pair.content_type)]
    path = f"/model/{ref.name}/{ref.requested}/invocations"
    return exchange.Inbound(
        ref, path, path, "", None, headers, pair.body, f"verify-{uuid.uuid4().hex}"
    )


def deadline_s(config: ProxyConfig, model: str, pools: Pools) -> float:
    """How long one pair may take: an attempt's timeout, and the retries and cold-start
    hold the config allows on top of it."""
    target = pools.targets[model].serverless
    retry = config.retry_for(model, Backend.SERVERLESS)
    extra = retry.budget_s + retry.backoff_s.max if retry.enabled else 0.0
    hold = config.cold_start_for(model, Backend.SERVERLESS).hold_s
    return target.settings.total_timeout_s + extra + hold


async def verify_pairs(
    config: ProxyConfig, model: str, pairs: Sequence[Pair], concurrency: int
) -> list[Row]:
    """Send each pair's request through the translation to `model`'s serverless endpoint,
    `concurrency` at a time, and judge each answer; rows in the pairs' order."""
    pools = Pools.build(config)
    credentials = build_credentials(config)
    tolerance = Tolerance.from_config(config.models[model].compare)
    limit = deadline_s(config, model, pools)
    slots = asyncio.Semaphore(concurrency)

    async def one(pair: Pair) -> Row:
        async with slots:
            try:
                inbound = _inbound(pair, config)
            except UnknownModel as exc:
                return failed(pair, f"not served by the config: {exc.message}")
            try:
                async with asyncio.timeout(limit):
                    reply = await exchange.send(
                        inbound, Backend.SERVERLESS, pools, credentials, exchange.Trace()
                    )
            except TimeoutError:
                return failed(pair, f"no answer within {limit:g} s")
            except CALL_FAILURES as exc:
                return failed(pair, f"{exc.flag} {exc.status_code}: {exc.message}")
            except ProxyError as exc:
                # Refused before any backend saw it: the client would get this local reply.
                reply = render(exc)
            return judge(pair, reply, tolerance)

    try:
        return list(await asyncio.gather(*(one(pair) for pair in pairs)))
    finally:
        await pools.aclose()
