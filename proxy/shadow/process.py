"""The shadow worker process: `python -m proxy.shadow.process FD`.

It serves jobs from the socket FD until the proxy closes it. The first message is the
config; from it the process builds what one shadow call needs (pools, credentials,
tolerances), the same way the proxy's app builds its own, then answers each job with
the `Outcome` of the same `mirror()` that runs inline. Bodies come back only where the
mismatch record may keep them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from proxy.compare import Tolerance, shadow_error
from proxy.config import ProxyConfig
from proxy.credentials import build_credentials
from proxy.shadow.channel import Channel
from proxy.shadow.job import Outcome, ShadowJob
from proxy.shadow.mirror import ShadowCall, mirror, shadow_call, tolerances_of
from proxy.tasks import TaskSet
from proxy.telemetry.accesslog import configure_logging
from proxy.upstream.pools import Pools

LOGGER = logging.getLogger("serving_proxy.shadow")


class Runner:
    """The worker's side: the first message is the config, every later one a job."""

    def __init__(self, *, configure_logs: bool) -> None:
        self.configure_logs = configure_logs
        self.channel: Channel | None = None
        self.pools: Pools | None = None
        self.call: ShadowCall | None = None
        self.tolerances: dict[str, Tolerance] = {}
        self.tasks = TaskSet()

    def on_message(self, message: Any) -> None:
        if self.pools is None:
            self._configure(message)
            return
        assert self.channel is not None
        try:
            job_id, job, keep_answers = message
            name = f"shadow:{job.model}:{job.request_id}"
            self.tasks.spawn(self._run(job_id, job, keep_answers), name=name)
        except Exception as exc:  # answer anyway: the proxy holds a slot for this job
            LOGGER.exception("shadow job could not start")
            self.channel.send((message[0], Outcome(shadow_error(f"BUG {type(exc).__name__}"))))

    def _configure(self, config: ProxyConfig) -> None:
        if self.configure_logs:
            configure_logging(config.logging.level)
        self.pools = Pools.build(config)
        self.call = shadow_call(self.pools, build_credentials(config))
        self.tolerances = tolerances_of(config)

    async def _run(self, job_id: int, job: ShadowJob, keep_answers: bool) -> None:
        assert self.call is not None
        assert self.channel is not None
        outcome = await mirror(job, self.tolerances, self.call)
        if outcome.answers is not None and (not keep_answers or outcome.result.matched):
            outcome = Outcome(outcome.result, outcome.call)
        self.channel.send((job_id, outcome))

    async def aclose(self) -> None:
        await self.tasks.aclose()
        if self.pools is not None:
            await self.pools.aclose()


async def serve(fd: int, *, configure_logs: bool = True) -> None:
    """Answer the jobs that arrive on the socket `fd` until it closes."""
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()

    def on_closed() -> None:
        if not closed.done():
            closed.set_result(None)

    runner = Runner(configure_logs=configure_logs)
    channel = runner.channel = Channel(runner.on_message, on_closed)
    await loop.create_unix_connection(lambda: channel, sock=socket.socket(fileno=fd))
    await closed
    await runner.aclose()


def main(argv: Sequence[str]) -> int:
    """Serve jobs from the socket FD (`argv[0]`) until it closes; ignore SIGINT/SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import uvloop

    uvloop.run(serve(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
