"""`serving-proxy rollback` against a real proxy whose Redis state store is stopped: it
succeeds (the rollback is in force on that replica) and says it is not persisted yet."""

from __future__ import annotations

import io

import pytest

from proxy.app import create_app
from proxy.cli.cutover import NOT_PERSISTED, run_admin_command
from proxy.cli.main import build_parser
from tests.admin.test_api import TOKEN
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
