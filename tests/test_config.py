"""Config validation: every bad key or value stops start-up naming the key and the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, load_config, parse_config
from proxy.config.backends import DEFAULT_MAX_BODY_BYTES, DEFAULT_TOTAL_TIMEOUT_S, replica_id_of
from proxy.models import Backend, CsvMode

CONTRACT = """
listen: {host: 127.0.0.1, port: 8080}
backends:
  legacy:     {url: "http://127.0.0.1:5001"}
  serverless: {url: "http://127.0.0.1:5002", path: "/model-endpoint/{name}/{version}/invocations"}
models:
  iris:
    stages: {Production: "3", Staging: "4"}
    serverless: {url: "http://127.0.0.1:5003", path: "/invocations"}
    route: serverless
"""


def base() -> dict[str, Any]:
    return {
        "backends": {"serverless": {"url": "http://127.0.0.1:5002"}},
        "models": {"iris": {}},
    }


def test_the_issue_contract_loads(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(CONTRACT)
    config = load_config(path, {})
    assert config.listen.port == 8080
    iris = config.models["iris"]
    assert iris.stages == {"Production": "3", "Staging": "4"}
    assert iris.route is Backend.SERVERLESS
    assert iris.serverless is not None
    assert iris.serverless.path == "/invocations"
    assert config.limits.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert config.backends.serverless is not None
    assert config.backends.serverless.timeout.total == DEFAULT_TOTAL_TIMEOUT_S


def test_defaults_for_a_bare_model() -> None:
    config = parse_config({**base(), "models": {"iris": None}}, {})
    iris = config.models["iris"]
    assert iris.route is Backend.SERVERLESS
    assert iris.csv_mode is CsvMode.PASSTHROUGH
    assert iris.accept_v2_bodies is False


def test_yaml_ints_become_version_strings() -> None:
    config = parse_config(
        {**base(), "models": {"iris": {"stages": {"Production": 3}, "versions": [1, 3]}}}, {}
    )
    assert config.models["iris"].stages == {"Production": "3"}
    assert config.models["iris"].versions == ("1", "3")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        pytest.param({"listen": {"hots": "x"}}, "listen.hots: unknown key", id="unknown-key"),
        pytest.param({"listen": {"port": 70000}}, "listen.port", id="port-range"),
        pytest.param({"models": {"iris": {"route": "both"}}}, "models.iris.route", id="route"),
        pytest.param(
            {"models": {"iris": {"stages": {"Production": "three"}}}},
            "models.iris.stages.Production",
            id="stage-not-a-version",
        ),
        pytest.param(
            {"models": {"iris": {"route": "legacy"}}},
            "backends.legacy is not configured",
            id="legacy-route-without-backend",
        ),
        pytest.param(
            {"backends": {"serverless": {"url": "ftp://x"}}},
            "backends.serverless.url",
            id="bad-scheme",
        ),
        pytest.param(
            {"backends": {"serverless": {"url": "http://x", "path": "/{model}/invocations"}}},
            "backends.serverless.path",
            id="unknown-template-field",
        ),
        pytest.param({"backends": {}}, "backends.serverless: is required", id="no-serverless"),
        pytest.param(
            {"models": {"a": {"endpoint": "e"}, "b": {"endpoint": "e"}}},
            "'e' is also the endpoint",
            id="duplicate-endpoint",
        ),
        pytest.param(
            {"models": {"iris": {"versions": ["1"], "stages": {"Production": "2"}}}},
            "models.iris.stages.Production: version 2 is not in versions",
            id="stage-outside-versions",
        ),
        pytest.param({"models": {"a/b": {}}}, "models.a/b", id="name-with-slash"),
        pytest.param(
            {"backends": {"serverless": {"url": "http://x", "token_env": "not a name"}}},
            "backends.serverless.token_env",
            id="bad-env-name",
        ),
        pytest.param(
            {"models": {"iris": {"stages": {"Production": "3\n"}}}},
            "models.iris.stages.Production",
            id="version-with-trailing-newline",
        ),
        pytest.param({"models": {"iris\n": {}}}, "models.iris", id="name-with-newline"),
        pytest.param(
            {"backends": {"serverless": {"url": "http://x", "token_env": "TOKEN\n"}}},
            "backends.serverless.token_env",
            id="env-name-with-newline",
        ),
        pytest.param({"metrics": {"token_env": "a-b"}}, "metrics.token_env", id="metrics-env"),
        pytest.param({"redis": {"password_env": "1X"}}, "redis.password_env", id="redis-env"),
        pytest.param({"limits": {"header_bytes": 10}}, "limits.header_bytes", id="tiny-head"),
        pytest.param({"limits": {"body_timeout_s": 0}}, "limits.body_timeout_s", id="no-wait"),
        pytest.param({"limits": {"max_depth": 513}}, "limits.max_depth", id="depth-ceiling"),
        pytest.param(
            {"limits": {"memory_wait_s": 30, "body_timeout_s": 30}},
            "memory_wait_s: must be shorter than body_timeout_s",
            id="memory-wait-past-body-deadline",
        ),
        pytest.param(
            {"server": {"upstream_client": "httpx"}},
            "server.upstream_client",
            id="unknown-upstream-client",
        ),
    ],
)
def test_bad_config_names_key_and_file(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**base(), **change}, {}, "proxy.yaml")
    assert str(info.value).startswith("proxy.yaml: ")
    assert needle in str(info.value)


def test_token_comes_from_the_named_environment_variable() -> None:
    doc = base()
    doc["backends"]["serverless"]["token_env"] = "DATABRICKS_TOKEN"
    doc["client_auth"] = {"mode": "none"}
    config = parse_config(doc, {"DATABRICKS_TOKEN": "dapi-secret"})
    assert config.secrets["DATABRICKS_TOKEN"].get_secret_value() == "dapi-secret"
    assert "dapi-secret" not in repr(config)


def test_missing_token_variable_stops_start_up() -> None:
    doc = base()
    doc["backends"]["serverless"]["token_env"] = "DATABRICKS_TOKEN"
    doc["client_auth"] = {"mode": "none"}
    with pytest.raises(ConfigError, match="DATABRICKS_TOKEN"):
        parse_config(doc, {}, "proxy.yaml")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        pytest.param("listen: [", "not valid YAML", id="yaml"),
        pytest.param("- a\n- b\n", "must be a YAML mapping", id="not-a-mapping"),
    ],
)
def test_unreadable_files(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(path, {})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/proxy.yaml", {})


@pytest.mark.parametrize(
    ("section", "env"),
    [
        ({"metrics": {"token_env": "METRICS_TOKEN"}}, "METRICS_TOKEN"),
        ({"redis": {"password_env": "REDIS_PASSWORD"}}, "REDIS_PASSWORD"),
        ({"reporting": {"label_key_env": "LABEL_KEY"}}, "LABEL_KEY"),
    ],
)
def test_every_named_secret_is_read_from_the_environment(section: dict[str, Any], env: str) -> None:
    config = parse_config({**base(), **section}, {env: "s3cret-value"})
    assert config.secrets[env].get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(config)
    with pytest.raises(ConfigError, match=env):
        parse_config({**base(), **section}, {}, "proxy.yaml")


def test_a_short_admin_token_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="at least 32") as info:
        parse_config(base(), {"SERVING_PROXY_ADMIN_TOKEN": "x" * 31}, "proxy.yaml")
    assert str(info.value).startswith("proxy.yaml: ")
    assert "x" * 31 not in str(info.value)
    config = parse_config(base(), {"SERVING_PROXY_ADMIN_TOKEN": "x" * 32})
    assert "SERVING_PROXY_ADMIN_TOKEN" in config.secrets


def test_the_hardening_limits_have_their_documented_defaults() -> None:
    limits = parse_config(base(), {}).limits
    assert (limits.header_bytes, limits.head_timeout_s, limits.body_timeout_s) == (65536, 10, 30)
    assert limits.max_connections == 4096
    assert (limits.max_columns, limits.max_cells, limits.max_depth) == (16384, 10_000_000, 100)
    assert limits.memory_budget_mb is None
    serverless = parse_config(base(), {}).backends.serverless
    assert serverless is not None
    assert serverless.max_reply_bytes == 64 * 1024 * 1024
    assert serverless.retry_after_write is False
    assert serverless.pass_set_cookie is False


@pytest.mark.parametrize(
    "url",
    ["redis://:in-the-url@127.0.0.1:6379/0", "unix:///run/redis.sock?db=0&password=in-the-url"],
)
def test_a_redis_password_in_the_url_and_in_the_environment_is_refused(url: str) -> None:
    section = {"state": url, "redis": {"password_env": "REDIS_PASSWORD"}}
    with pytest.raises(ConfigError, match=r"redis\.password_env: the state URL carries a password"):
        parse_config({**base(), **section}, {"REDIS_PASSWORD": "s3cret"})
    # Either one alone is fine.
    parse_config({**base(), "state": url}, {})
    parse_config(
        {**base(), **section, "state": "redis://127.0.0.1:6379/0"}, {"REDIS_PASSWORD": "x"}
    )


def test_an_unset_memory_wait_fits_inside_a_short_body_deadline() -> None:
    limits = parse_config({**base(), "limits": {"body_timeout_s": 4}}, {}).limits
    assert limits.memory_wait_s == 2
    assert parse_config(base(), {}).limits.memory_wait_s == 10


SERVERLESS_REALITIES = """
backends:
  serverless: {url: "http://127.0.0.1:9001", path: "/model-endpoint/{name}/{version}/invocations"}
  legacy:
    url: "http://127.0.0.1:9002"
    retry: {on: [429], max_attempts: 2}
models:
  iris:
    retry: {on: [429, 503, connect], budget_s: 3, max_attempts: 5, backoff_s: {base: 0.2, max: 5}}
    cold_start: {hold_s: 20}
    max_in_flight: 2
    queue: {size: 3, timeout_s: 0.5}
    fallback: legacy
    rollout:
      steps: [10, 100]
      interval: 1m
      probe:
        content_type: "application/json; format=pandas-split"
        body: '{"columns": ["a"], "data": [[1]]}'
  wine: {}
retry_budget: {percent: 20, min_per_s: 5}
recording: {enabled: true, path: rec.jsonl, answers: true}
"""


def test_the_serverless_realities_keys_load_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(SERVERLESS_REALITIES)
    config = load_config(path, {})
    iris = config.models["iris"]
    # YAML 1.1 reads a bare `on:` as true: the key still means `on`.
    assert config.retry_for("iris", Backend.SERVERLESS).on == (429, 503, "connect")
    assert config.retry_for("iris", Backend.SERVERLESS).budget_s == 3
    assert (
        config.retry_for("wine", Backend.SERVERLESS)
        == config.retry_for("wine", Backend.SERVERLESS).model_copy()
    )
    assert config.retry_for("wine", Backend.SERVERLESS).enabled  # on by default
    assert config.retry_for("iris", Backend.LEGACY).on == (429,)
    assert config.cold_start_for("iris", Backend.SERVERLESS).hold_s == 20
    assert config.cold_start_for("wine", Backend.SERVERLESS).hold_s == 0
    assert (iris.max_in_flight, iris.queue.size, iris.queue.timeout_s) == (2, 3, 0.5)
    assert iris.fallback == "legacy"
    assert iris.rollout is not None
    assert iris.rollout.probe is not None
    assert iris.rollout.probe.expect_status == 200
    assert (config.retry_budget.percent, config.retry_budget.min_per_s) == (20, 5)
    assert config.recording.answers


def test_legacy_retries_are_off_unless_configured() -> None:
    config = parse_config(base(), {})
    assert not config.retry_for("iris", Backend.LEGACY).enabled
    assert config.models["iris"].max_in_flight is None
    assert config.models["iris"].fallback is None


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"models": {"iris": {"fallback": "legacy"}}}, "models.iris.fallback"),
        ({"models": {"iris": {"retry": {"on": [500]}}}}, "models.iris.retry.on"),
        ({"models": {"iris": {"retry": {"backoff_s": {"base": 2, "max": 1}}}}}, "base"),
        ({"models": {"iris": {"max_in_flight": 0}}}, "models.iris.max_in_flight"),
        ({"models": {"iris": {"cold_start": {"hold_s": -1}}}}, "models.iris.cold_start.hold_s"),
    ],
)
def test_bad_serverless_realities_keys_name_the_key(change: dict[str, Any], needle: str) -> None:
    data = {"backends": {"serverless": {"url": "http://127.0.0.1:9001"}}, **change}
    with pytest.raises(ConfigError) as info:
        parse_config(data, {})
    assert needle in str(info.value)


def test_the_replica_id_is_configured_else_hostname_else_host_and_port() -> None:
    named = parse_config({**base(), "server": {"replica_id": "proxy-a"}}, {})
    assert replica_id_of(named.server, named.listen, {"HOSTNAME": "pod-1"}) == "proxy-a"
    plain = parse_config({**base(), "listen": {"host": "127.0.0.1", "port": 8123}}, {})
    assert replica_id_of(plain.server, plain.listen, {"HOSTNAME": "pod-1"}) == "pod-1"
    assert replica_id_of(plain.server, plain.listen, {}) == "127.0.0.1:8123"
    # A HOSTNAME no id may be (a space, a newline) is passed over, not logged.
    assert replica_id_of(plain.server, plain.listen, {"HOSTNAME": "a b\n"}) == "127.0.0.1:8123"


@pytest.mark.parametrize("bad", ["", "a b", "-lead", "x" * 254, "pod\n"])
def test_a_bad_replica_id_names_the_key(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.replica_id"):
        parse_config({**base(), "server": {"replica_id": bad}}, {})
