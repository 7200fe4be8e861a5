"""deploy/kubernetes, rendered as a user applies it and checked against what it deploys.

`kubectl kustomize` renders the base, the dev overlay and the ServiceMonitor component; the
ConfigMap's `proxy.yaml` goes through the proxy's own config loader with only the
environment the Deployment gives the container; ports, probes, the config path and the user
are held to the Dockerfile (read with tests/test_dockerfile.py's parser) and to the app's
real routes; the pod is given longer to stop than the proxy takes to drain; the proxy boots
on that config and answers the probes; the renders match the Kubernetes API's schemas
(kubernetes-validate, strict); and checkov passes the rendered manifests and the Dockerfile
with no failed check, a skip only with its reason. checkov and kubernetes-validate live in
`.venv-checkov`, built on first use (checkov's dependencies are not the project's).

kubectl: the one on PATH or beside the interpreter (scripts/test puts one in `.venv/bin`
when the machine has none). Missing in CI, these tests fail; elsewhere they skip, saying so.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.routing import Route

from proxy import __version__, jsoncodec
from proxy.app import routes
from proxy.config import ADMIN_TOKEN_ENV, MIN_ADMIN_TOKEN_CHARS, ProxyConfig, load_config
from proxy.config.backends import TokenAuth
from proxy.telemetry.listener import METRICS_PATH
from tests.integration.proxy_process import ProxyProcess, free_port
from tests.test_dockerfile import DOCKERFILE, Instruction, one, parse, stages
from tests.venvs import stamped_venv

pytestmark = pytest.mark.kubernetes

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
DEV = KUBERNETES / "overlays" / "dev"
SERVICEMONITOR = KUBERNETES / "components" / "servicemonitor"

# `patches:` and `components:` need kustomize 4 or later (kubectl 1.21 or later).
MIN_KUSTOMIZE_MAJOR = 4
KUSTOMIZE_TIMEOUT_S = 60.0

# The manifest checkers, in a venv of their own: checkov's dependencies are not the project's.
CHECKERS_VENV = ROOT / ".venv-checkov"
CHECKERS = ("checkov==3.3.30", "kubernetes-validate==1.37.0")
CHECKERS_INSTALL_TIMEOUT_S = 600.0
CHECK_TIMEOUT_S = 120.0
MIN_SKIP_REASON_CHARS = 20
# The oldest Kubernetes the manifests are written for (the pod security admission era) and
# the newest whose schemas kubernetes-validate carries.
SCHEMA_VERSIONS = ("1.25.0", "1.37.0")

PROXY = ("Deployment", "serving-proxy")
REDIS_SERVICE = "serving-proxy-redis"


# --- tools ------------------------------------------------------------------------------------


def unavailable(reason: str) -> None:
    """CI must run these tests: there a missing tool fails them; elsewhere it skips them."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must install it: scripts/test does)")
    pytest.skip(reason)


def find_kubectl() -> str | None:
    # scripts/test's fallback puts kubectl next to the venv's interpreter, which is on PATH
    # only in an activated venv.
    beside = Path(sys.executable).with_name("kubectl")
    return str(beside) if beside.exists() else shutil.which("kubectl")


def kustomize_major(kubectl: str) -> int | None:
    result = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=KUSTOMIZE_TIMEOUT_S,
        check=False,
    )
    found = re.match(
        r"v?(\d+)\.", jsoncodec.loads(result.stdout or "{}").get("kustomizeVersion", "")
    )
    return int(found.group(1)) if found else None


@pytest.fixture(scope="module")
def kubectl() -> str:
    binary = find_kubectl()
    if binary is None:
        unavailable("kubectl is not installed")
    assert binary is not None
    major = kustomize_major(binary)
    if major is None or major < MIN_KUSTOMIZE_MAJOR:
        unavailable(f"{binary}'s kustomize is older than v{MIN_KUSTOMIZE_MAJOR} (or unknown)")
    return binary


def render(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=KUSTOMIZE_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def write_docs(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base(kubectl: str) -> list[dict[str, Any]]:
    return render(kubectl, BASE)


@pytest.fixture(scope="module")
def dev(kubectl: str) -> list[dict[str, Any]]:
    return render(kubectl, DEV)


@pytest.fixture(scope="module")
def monitored(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The dev overlay with the ServiceMonitor component, as a user's overlay adds it."""
    overlay = tmp_path_factory.mktemp("monitored")
    # kustomize takes relative paths only.
    doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "serving-proxy",
        "resources": [os.path.relpath(DEV, overlay)],
        "components": [os.path.relpath(SERVICEMONITOR, overlay)],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return render(kubectl, overlay)


# --- what the rendered manifests hold ------------------------------------------------------


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def proxy_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = find(docs, *PROXY)["spec"]["template"]["spec"]
    return spec


def proxy_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = proxy_pod(docs)["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def pod_labels(docs: list[dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = find(docs, *PROXY)["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def config_text(docs: list[dict[str, Any]]) -> str:
    """The `proxy.yaml` of the ConfigMap the proxy's config volume mounts."""
    volume = next(v for v in proxy_pod(docs)["volumes"] if v["name"] == "config")
    configmap = find(docs, "ConfigMap", volume["configMap"]["name"])
    text: str = configmap["data"][Path(image_config_path()).name]
    return text


def container_environ(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The environment the Deployment gives the proxy: each Secret reference resolved from
    the rendered Secret (the dev overlay's), or, where the render has none (the base: the
    user creates it), a placeholder as long as an admin token must be."""
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    environ = {}
    for var in proxy_container(docs).get("env", []):
        if "value" in var:
            environ[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        secret = secrets.get(ref["name"])
        if secret is None:
            environ[var["name"]] = "x" * MIN_ADMIN_TOKEN_CHARS
        else:
            environ[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return environ


def load(docs: list[dict[str, Any]]) -> ProxyConfig:
    """The ConfigMap's config read as `serve` reads it (`load_config`), with only the
    environment the Deployment gives the container."""
    with tempfile.TemporaryDirectory() as mount:
        path = Path(mount) / Path(image_config_path()).name
        path.write_text(config_text(docs), encoding="utf-8")
        return load_config(path, container_environ(docs))


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in named, f"no containerPort named {port}"
    return int(named[port])


# --- what the image says -------------------------------------------------------------------


def runtime_stage() -> list[Instruction]:
    return stages(parse(DOCKERFILE.read_text(encoding="utf-8")))[-1]


def image_uid_gid() -> tuple[int, int]:
    user, _, group = one(runtime_stage(), "USER").args.partition(":")
    return int(user), int(group or user)


def image_port() -> int:
    return int(one(runtime_stage(), "EXPOSE").args)


def image_config_path() -> str:
    argv = jsoncodec.loads(one(runtime_stage(), "CMD").args)
    return str(argv[argv.index("--config") + 1])


def image_volumes() -> list[str]:
    return list(jsoncodec.loads(one(runtime_stage(), "VOLUME").args))


# --- the tests -----------------------------------------------------------------------------


def test_base_renders_every_object(base: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in base}
    for kind in (
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ServiceAccount",
    ):
        assert (kind, "serving-proxy") in kinds
    assert any(kind == "ConfigMap" for kind, _ in kinds)
    # The base applies on a cluster without the Prometheus Operator's CRDs, and holds no
    # secret value: the Secret is the user's (or the dev overlay's).
    assert not any(kind in ("ServiceMonitor", "Secret") for kind, _ in kinds)
    assert find(base, *PROXY)["spec"]["replicas"] == 3
    assert {d["metadata"].get("namespace") for d in base} == {"serving-proxy"}


def test_base_runs_the_image_of_this_version(base: list[dict[str, Any]]) -> None:
    # The tag deploy/kubernetes/README.md tells a trial to build: this code's version.
    assert proxy_container(base)["image"] == f"serving-proxy:{__version__}"


def test_dev_overlay_adds_redis_namespace_and_a_placeholder_secret(
    dev: list[dict[str, Any]],
) -> None:
    find(dev, "Namespace", "serving-proxy")
    redis = find(dev, "Deployment", REDIS_SERVICE)
    assert redis["spec"]["replicas"] == 1
    service = find(dev, "Service", REDIS_SERVICE)
    assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    # The config's state URL names the overlay's Redis Service, on its port.
    state = load(dev).state or ""
    assert state.startswith("redis://")
    host, _, rest = state.removeprefix("redis://").partition(":")
    assert host == REDIS_SERVICE
    assert int(rest.split("/")[0]) == service["spec"]["ports"][0]["port"]


@pytest.mark.parametrize("which", ["base", "dev"])
def test_configmap_loads_with_the_proxys_loader(which: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(which)
    # load_config refuses a config that names a variable the container does not have.
    config = load(docs)
    assert config.backends.legacy is not None
    assert config.backends.serverless is not None
    auth = config.backends.serverless.auth
    assert isinstance(auth, TokenAuth)
    assert auth.token_env in container_environ(docs)
    # An injected token is lent only to proven clients.
    assert config.client_auth is not None
    assert config.client_auth.mode == "databricks"
    assert ADMIN_TOKEN_ENV in config.secrets
    assert config.server.workers == 1
    # The config is mounted where the image's CMD reads it, read-only.
    mount = next(m for m in proxy_container(docs)["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == str(Path(image_config_path()).parent)
    assert mount["readOnly"] is True
    # Read-only config directory: the default state file beside it could not be written.
    assert config.state is not None
    assert "://" in config.state


@pytest.mark.parametrize("which", ["base", "dev"])
def test_tokens_come_from_secret_references(which: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(which)
    config = load(docs)
    env = {v["name"]: v for v in proxy_container(docs)["env"]}
    for name in (*config.token_envs(), ADMIN_TOKEN_ENV):
        assert "value" not in env[name], f"{name}: a literal value in the manifest"
        assert "secretKeyRef" in env[name]["valueFrom"]


def test_dev_secret_is_an_obvious_placeholder(dev: list[dict[str, Any]]) -> None:
    environ = container_environ(dev)
    assert len(environ[ADMIN_TOKEN_ENV]) >= MIN_ADMIN_TOKEN_CHARS
    for value in environ.values():
        assert "dev" in value, "the dev overlay's Secret must not look like a real one"


def test_ports_match_the_image_and_the_config(base: list[dict[str, Any]]) -> None:
    config = load(base)
    container = proxy_container(base)
    assert config.listen.host == "0.0.0.0"
    assert port_number(container, "http") == config.listen.port == image_port()
    assert config.metrics.listen is not None
    assert port_number(container, "metrics") == config.metrics.listen.port
    service = find(base, "Service", "serving-proxy")
    assert selects(service["spec"]["selector"], pod_labels(base))
    targets = {p["name"]: port_number(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert targets == {"http": config.listen.port, "metrics": config.metrics.listen.port}


def test_probes_hit_the_apps_health_routes(base: list[dict[str, Any]]) -> None:
    config = load(base)
    container = proxy_container(base)
    served = {r.path for r in routes() if isinstance(r, Route) and "GET" in (r.methods or ())}
    expected = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert path in served
        assert port_number(container, get["port"]) == config.listen.port
    # The image's own HEALTHCHECK checks the same route as the liveness probe.
    env = " ".join(ins.args for ins in runtime_stage() if ins.keyword == "ENV")
    assert f":{image_port()}/healthz" in env


def prestop_pause_s(container: dict[str, Any]) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return float(command[1])


@pytest.mark.parametrize("which", ["base", "dev"])
def test_pod_outlives_the_drain(which: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(which)
    pod = proxy_pod(docs)
    pause = prestop_pause_s(proxy_container(docs))
    assert pause > 0
    drain = load(docs).server.graceful_shutdown_s
    assert pod["terminationGracePeriodSeconds"] > pause + drain
    # A rolling update starts a new pod before stopping an old one.
    strategy = find(docs, *PROXY)["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    assert strategy["maxSurge"] >= 1


@pytest.mark.parametrize("which", ["base", "dev"])
def test_runs_as_the_images_user_on_a_read_only_root(
    which: str, request: pytest.FixtureRequest
) -> None:
    docs = request.getfixturevalue(which)
    uid, gid = image_uid_gid()
    pod = proxy_pod(docs)
    container = proxy_container(docs)
    for context in (pod["securityContext"], container["securityContext"]):
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == uid
        assert context["runAsGroup"] == gid
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    # Every path the proxy may write is a volume: tempfile's /tmp and the image's VOLUMEs.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    for path in ("/tmp", *image_volumes()):
        assert path in mounts, f"{path} is not writable on a read-only root"
        assert "emptyDir" in mounts[path]


def test_disruption_budget_autoscaler_and_network_policy_cover_the_proxy(
    base: list[dict[str, Any]],
) -> None:
    labels = pod_labels(base)
    deployment = find(base, *PROXY)
    pdb = find(base, "PodDisruptionBudget", "serving-proxy")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["maxUnavailable"] == 1
    hpa = find(base, "HorizontalPodAutoscaler", "serving-proxy")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["minReplicas"] == deployment["spec"]["replicas"] <= hpa["maxReplicas"]
    policy = find(base, "NetworkPolicy", "serving-proxy")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], labels)
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert ingress_ports == {"http", "metrics"}
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert {53, 6379, 443} <= egress_ports


def test_dev_redis_admits_only_the_proxy(dev: list[dict[str, Any]]) -> None:
    policy = find(dev, "NetworkPolicy", REDIS_SERVICE)["spec"]
    redis = find(dev, "Deployment", REDIS_SERVICE)["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["podSelector"]["matchLabels"], redis)
    [rule] = policy["ingress"]
    [source] = rule["from"]
    assert selects(source["podSelector"]["matchLabels"], pod_labels(dev))
    assert policy["egress"] == []


def test_servicemonitor_component_scrapes_the_metrics_port(
    monitored: list[dict[str, Any]],
) -> None:
    monitor = find(monitored, "ServiceMonitor", "serving-proxy")
    service = find(monitored, "Service", "serving-proxy")
    # A ServiceMonitor selects Services in its own namespace unless told otherwise.
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == METRICS_PATH


# --- the proxy, started with the ConfigMap's config ----------------------------------------


@pytest.fixture
def booted(
    dev: list[dict[str, Any]], redis_url: str, tmp_path: Path
) -> Iterator[tuple[ProxyProcess, int]]:
    """The real proxy on the dev overlay's config and container environment, moved to
    loopback: its ports free ones, its Redis the test's (the backends are never called)."""
    doc = yaml.safe_load(config_text(dev))
    metrics_port = free_port()
    doc["state"] = redis_url
    doc["metrics"]["listen"] = {"host": "127.0.0.1", "port": metrics_port}
    with ProxyProcess(doc, tmp_path, env=container_environ(dev)) as proxy:
        yield proxy, metrics_port


@pytest.mark.redis
def test_the_configmap_boots_and_answers_the_probes(
    booted: tuple[ProxyProcess, int], dev: list[dict[str, Any]]
) -> None:
    proxy, metrics_port = booted
    container = proxy_container(dev)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert httpx.get(proxy.url + path, timeout=5).status_code == 200, probe
    scrape = httpx.get(f"http://127.0.0.1:{metrics_port}{METRICS_PATH}", timeout=5)
    assert scrape.status_code == 200
    assert "serving_proxy_" in scrape.text
    # Only there: the clients' port (the Service's `http`) does not serve the metrics.
    assert httpx.get(proxy.url + METRICS_PATH, timeout=5).status_code == 404
    # SIGTERM, as the kubelet sends after preStop: the proxy exits well within the grace.
    proxy.terminate()
    assert proxy.wait(timeout=load(dev).server.graceful_shutdown_s) in (0, -15)


# --- checkov and the API schemas ----------------------------------------------------------


@pytest.fixture(scope="session")
def checkers() -> Path:
    """`.venv-checkov` with CHECKERS; installed once, then reused by its stamp. Its bin/."""
    return stamped_venv(
        CHECKERS_VENV,
        CHECKERS,
        "checkov and kubernetes-validate",
        CHECKERS_INSTALL_TIMEOUT_S,
    )


def checkov(checkers: Path, directory: Path, *frameworks: str) -> dict[str, dict[str, Any]]:
    """checkov's JSON report of `directory`, by framework."""
    result = subprocess.run(
        [
            str(checkers / "checkov"),
            "--directory",
            str(directory),
            "--framework",
            *frameworks,
            "--output",
            "json",
            # Offline: no guidelines, policies or mappings fetched from the vendor.
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
        check=False,
        cwd=directory,
    )
    # 0: every check passed; 1: some failed (asserted on below); anything else: it broke.
    assert result.returncode in (0, 1), result.stderr[-4000:]
    reports = jsoncodec.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == set(frameworks), result.stdout[-4000:]
    return {r["check_type"]: r for r in reports}


def assert_clean(framework: str, report: dict[str, Any]) -> None:
    summary = report["summary"]
    results = report["results"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in results["failed_checks"]
    ]
    assert not failed, f"checkov {framework}:\n" + "\n".join(failed)
    assert summary["parsing_errors"] == 0, f"checkov {framework}: {summary}"
    assert summary["passed"] > 0, f"checkov {framework} checked nothing: {summary}"
    # A skip only with its reason, written in the manifest beside it.
    for skipped in results["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment", "")
        assert len(reason) > MIN_SKIP_REASON_CHARS, f"{skipped['check_id']}: no reason given"


@pytest.mark.timeout(CHECKERS_INSTALL_TIMEOUT_S + CHECK_TIMEOUT_S + 60)
def test_checkov_passes_the_dockerfile(checkers: Path, tmp_path: Path) -> None:
    shutil.copyfile(DOCKERFILE, tmp_path / "Dockerfile")
    assert_clean("dockerfile", checkov(checkers, tmp_path, "dockerfile")["dockerfile"])


@pytest.mark.timeout(CHECKERS_INSTALL_TIMEOUT_S + CHECK_TIMEOUT_S + 60)
def test_checkov_passes_the_rendered_manifests(
    checkers: Path,
    base: list[dict[str, Any]],
    dev: list[dict[str, Any]],
    monitored: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    renders = {"base": base, "dev": dev, "monitored": monitored}
    for name, docs in renders.items():
        write_docs(tmp_path / f"{name}.yaml", docs)
    report = checkov(checkers, tmp_path, "kubernetes")["kubernetes"]
    assert_clean("kubernetes", report)
    # Every object of every render was scanned (checkov also counts each container).
    assert report["summary"]["resource_count"] >= sum(len(docs) for docs in renders.values())


@pytest.mark.timeout(CHECKERS_INSTALL_TIMEOUT_S + CHECK_TIMEOUT_S + 60)
@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_manifests_match_the_api_schemas(
    version: str,
    checkers: Path,
    base: list[dict[str, Any]],
    dev: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    # Strict: a misspelt or misplaced field is an error, not something the API server
    # would drop without a word.
    files = [write_docs(tmp_path / f"{n}.yaml", d) for n, d in (("base", base), ("dev", dev))]
    result = subprocess.run(
        [
            str(checkers / "kubernetes-validate"),
            "--strict",
            "--quiet",
            "-k",
            version,
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
