"""What crosses between the proxy and whoever mirrors a request: the job and its outcome.

Plain frozen values, so a job runs the same on this event loop or in the shadow worker
process. Both are pickled on every mirrored request: each reduces to its constructor
and a tuple, which pickle handles several times faster than a slotted dataclass's
state protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.compare import Answer, Comparison
from proxy.exchange import Inbound
from proxy.models import Backend, Reply


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """One request to mirror.

    Attributes:
        model: the configured model name.
        request_id: the client request's id, kept with a mismatch.
        primary, shadow: which backend answered the client, which one is shadowed.
        primary_reply: the answer the client got, in the legacy client's form.
        inbound: the client's request, to send again to the shadow backend.
    """

    model: str
    request_id: str
    primary: Backend
    shadow: Backend
    primary_reply: Reply
    inbound: Inbound

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            ShadowJob,
            (
                self.model,
                self.request_id,
                self.primary,
                self.shadow,
                self.primary_reply,
                self.inbound,
            ),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What mirroring one job found, wherever it ran.

    Attributes:
        result: the verdict, and where the answers first differ.
        call: the shadow call's status and seconds when one was made (a local error's
            status when it failed on the way), for the rollout gates.
        answers: both answers as compared, when there were two.
    """

    result: Comparison
    call: tuple[int, float] | None = None
    answers: tuple[Answer, Answer] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (Outcome, (self.result, self.call, self.answers))
