"""The cutover commands against real proxies on one redis-server: `rollback` with the store
stopped succeeds (in force on that replica) and says it is not persisted yet; `replicas`
lists the fleet and its leader, and says when the store is out."""

from __future__ import annotations

import io
import json
import time

import pytest

from proxy.app import create_app
from proxy.cli.cutover import NOT_PERSISTED, run_admin_command
from proxy.cli.main import build_parser
from tests.admin.test_api import TOKEN
from tests.admin.test_fleet import fleet_config
from tests.admin.test_store_outage import redis_config
from tests.redis_server import MISSING, RedisServer, available
from tests.servers import LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def test_rollback_says_when_it_is_not_persisted(serverless: LiveServer, legacy: LiveServer) -> None:
    if not available():
        pytest.skip(MISSING)
    with RedisServer() as redis:
        app = create_app(redis_config(serverless, legacy, redis.url))
        with LiveServer(app, loop="asyncio") as proxy:
            environ = {"SERVING_PROXY_ADMIN_TOKEN": TOKEN, "SERVING_PROXY_URL": proxy.url}
            redis.halt()
            out = io.StringIO()
            args = build_parser().parse_args(["rollback", "iris", "--reason", "store down"])
            assert run_admin_command(args, environ, out) == 0
            text = out.getvalue()
            assert "NOT PERSISTED" in text
            assert f"rollback iris: {NOT_PERSISTED}" in text
            redis.start()
            out = io.StringIO()
            args = build_parser().parse_args(["rollback", "iris"])
            assert run_admin_command(args, environ, out) == 0
            assert "persisted" not in out.getvalue().lower()


def replicas_out(proxy: LiveServer, *flags: str) -> str:
    environ = {"SERVING_PROXY_ADMIN_TOKEN": TOKEN, "SERVING_PROXY_URL": proxy.url}
    out = io.StringIO()
    assert run_admin_command(build_parser().parse_args(["replicas", *flags]), environ, out) == 0
    return out.getvalue()


def test_replicas_lists_the_fleet_and_its_leader_and_says_when_the_store_is_out(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    if not available():
        pytest.skip(MISSING)
    with RedisServer() as redis:
        configs = [fleet_config(serverless, legacy, name, redis.url) for name in ("pa", "pb")]
        with (
            LiveServer(create_app(configs[0]), loop="asyncio") as a,
            LiveServer(create_app(configs[1]), loop="asyncio") as b,
        ):
            deadline = time.monotonic() + 5
            while "\npb " not in (text := replicas_out(b)):
                assert time.monotonic() < deadline, text
                time.sleep(0.05)
            lines = text.splitlines()
            assert lines[0].split() == [
                "REPLICA", "HOST", "VERSION", "STATE", "HEARTBEAT", "IN-FLIGHT", "NOTE"
            ]  # fmt: skip
            rows = {line.split()[0]: line for line in lines[1:3]}
            assert set(rows) == {"pa", "pb"}
            assert rows["pa"].rstrip().endswith("leader")
            assert rows["pb"].split()[1] == "*"  # the replica that answered
            assert lines[3].startswith("leader: pa since ")
            data = json.loads(replicas_out(a, "--json"))
            assert (data["replica_id"], data["leader"]["replica_id"]) == ("pa", "pa")
            assert [r["replica_id"] for r in data["replicas"]] == ["pa", "pb"]
            redis.halt()
            text = replicas_out(a)
            assert "state store unreachable: this replica's own record only" in text
            assert "leader: unknown (the state store did not answer)" in text
            assert [line.split()[0] for line in text.splitlines()[1:2]] == ["pa"]
