"""The Kubernetes overlay for clusters with KEDA and the Prometheus Operator, offline.

What is checked: deploy/k8s/overlays/keda-prometheus rendered by kubectl; its built-in kinds
against the Kubernetes schemas (strict, as test_deploy_files.py does) and its custom kinds
against the upstream CRD schemas vendored in tests/schemas/crds, closed here so that an
unknown field fails; and what the objects refer to, against the code and the base: the
consumer groups the services really join, the Deployments, the Secret's keys, the partitions
that bound scaling, the Services' ports, the labels the alerts query, alerts.yml itself.
The PodDisruptionBudgets are the base's, checked in every render.

What is not checked (no cluster): the CRDs' CEL rules (the one on replica counts is checked
below by hand), that KEDA reaches Kafka and moves the replicas, and that a Prometheus
picks up the ServiceMonitor and the PrometheusRule (its selectors are the cluster's).
`promtool check rules` on alerts.yml runs in test_prometheus.py.
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import importlib
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shared.settings import KafkaSettings
from tests.integration.test_deploy_files import (
    K8S,
    ROOT,
    SERVICES,
    container_env,
    containers_of,
    find,
    kustomize,
    parse_settings,
    settings_class,
    validate_kubernetes,
)
from waybill import cli
from waybill.prometheus_rule import render as render_prometheus_rule

OVERLAY = K8S / "overlays" / "keda-prometheus"
PROMETHEUS_RULE_FILE = OVERLAY / "prometheus-rule.yaml"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CRDS = ROOT / "tests" / "schemas" / "crds"
CRD_FILES = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
}

#: the names KEDA's kafka scaler reads (kafkaMetadata in pkg/scalers/kafka_scaler.go, v2.20.2):
#: trigger metadata is a map of strings in the CRD, so its schema cannot catch a misspelt key
KEDA_KAFKA_METADATA = frozenset(
    [
        "bootstrapServers",
        "bootstrapServersFromEnv",
        "consumerGroup",
        "consumerGroupFromEnv",
        "topic",
        "topicFromEnv",
        "partitionLimitation",
        "lagThreshold",
        "activationLagThreshold",
        "offsetResetPolicy",
        "allowIdleConsumers",
        "excludePersistentLag",
        "scaleToZeroOnInvalidOffset",
        "limitToPartitionsWithLag",
        "ensureEvenDistributionOfPartitions",
        "version",
        "tls",
        "unsafeSsl",
        "sasl",
        "saslTokenProvider",
        "awsRegion",
    ]
)
KEDA_KAFKA_AUTH = frozenset(
    [
        "tls",
        "ca",
        "cert",
        "key",
        "keyPassword",
        "sasl",
        "username",
        "password",
        "saslTokenProvider",
        "scopes",
        "oauthTokenEndpointUri",
        "oauthExtensions",
        "keytab",
        "realm",
        "kerberosConfig",
        "kerberosServiceName",
        "kerberosDisableFAST",
    ]
)
#: WAYBILL_KAFKA_SASL_MECHANISM in KEDA's spelling
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


# --- renders and what the code says -------------------------------------------------------


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return kustomize(OVERLAY)


@pytest.fixture(scope="module")
def alerts() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return document


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def consumer_group(service: str) -> tuple[str, list[str]]:
    """The service's consumer group and its topics, as its composition root builds them."""
    main = importlib.import_module(f"services.{service}.main")
    # only the routing is read: the settings just have to be valid, nothing connects
    settings = main.SETTINGS(
        database_url="postgresql://unused/unused", carrier_webhook_secret="x" * 32
    )
    consumer = main.build_runtime(settings).consumer
    return consumer.group_id, consumer.topics


def consumers_offset_reset() -> str:
    """The auto_offset_reset the services' subscriber passes (shared/messaging/broker.py)."""
    tree = ast.parse((ROOT / "shared" / "messaging" / "broker.py").read_text())
    values = {
        ast.literal_eval(keyword.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "broker.subscriber"
        for keyword in node.keywords
        if keyword.arg == "auto_offset_reset"
    }
    assert len(values) == 1, values
    return str(values.pop())


def kafka_settings(
    deployment: dict[str, Any],
    docs: list[dict[str, Any]],
    secrets: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[KafkaSettings, dict[str, str]]:
    (container,) = containers_of(deployment)
    env = container_env(container, docs, secrets)
    settings: KafkaSettings = parse_settings(monkeypatch, KafkaSettings, env)
    return settings, env


def test_consumer_group_introspection_sees_the_code() -> None:
    # guards the helper: the groups are the literals in services/*/consumers.py
    for service in SERVICES:
        source = (ROOT / "services" / service / "consumers.py").read_text()
        group, topics = consumer_group(service)
        assert f'group_id="{group}"' in source, service
        assert topics, f"{service} consumes nothing: there is no lag to scale on"
    assert consumers_offset_reset() in {"earliest", "latest"}


# --- CRD schemas ------------------------------------------------------------------------


def git_blob_id(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def test_vendored_crds_are_the_upstream_files_the_readme_names() -> None:
    readme = (CRDS / "README.md").read_text()
    for name in CRD_FILES.values():
        row = next((line for line in readme.splitlines() if f"`{name}`" in line), None)
        assert row is not None, f"{name} is not listed in tests/schemas/crds/README.md"
        blob = row.rstrip(" |").rsplit("|", 1)[1].strip()
        assert git_blob_id(CRDS / name) == blob, f"{name} differs from the upstream file"


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``additionalProperties: false`` wherever it lists properties and keeps
    no unknown fields: what the API server does by pruning, made an error. The branches of
    anyOf/allOf/oneOf/not are left alone: structural schemas name properties there only
    to constrain them, not to list them all."""
    result = dict(schema)
    if "properties" in schema:
        result["properties"] = {name: closed(sub) for name, sub in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            result.setdefault("additionalProperties", False)
    if isinstance(schema.get("items"), dict):
        result["items"] = closed(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        result["additionalProperties"] = closed(schema["additionalProperties"])
    return result


def crd_schema(api_version: str, kind: str, *, strict: bool = True) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / CRD_FILES[api_version, kind]).read_text())
    group, version = api_version.split("/")
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (group, kind)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return closed(schema) if strict else schema


def validate_custom(document: dict[str, Any], *, strict: bool = True) -> None:
    schema = crd_schema(document["apiVersion"], document["kind"], strict=strict)
    jsonschema.Draft7Validator(schema).validate(document)
    # the CRD leaves metadata to the API server: what these manifests use of it
    metadata = document["metadata"]
    assert set(metadata) <= {"name", "namespace", "labels", "annotations"}, metadata
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", metadata["name"]), metadata["name"]


def test_closing_the_schema_leaves_open_maps_and_preserved_fields_open() -> None:
    schema = {
        "type": "object",
        "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "raw": {
                "type": "object",
                "properties": {"a": {}},
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "list": {"type": "array", "items": {"type": "object", "properties": {"b": {}}}},
        },
    }
    strict = jsonschema.Draft7Validator(closed(schema))
    assert strict.is_valid({"labels": {"any": "x"}, "raw": {"other": 1}, "list": [{"b": 1}]})
    assert not strict.is_valid({"list": [{"c": 1}]})
    assert not strict.is_valid({"label": {}})


@pytest.mark.parametrize(
    ("kind", "misspell"),
    [
        ("ScaledObject", lambda d: d["spec"].update(maxReplicaCont=6)),
        ("ScaledObject", lambda d: d["spec"]["triggers"][0]["authenticationRef"].update(nmae="x")),
        ("TriggerAuthentication", lambda d: d["spec"]["secretTargetRef"][0].update(paramter="x")),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].update(anotations={})),
        ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(relabellings=[])),
    ],
)
def test_crd_validation_catches_a_misspelt_field(
    overlay: list[dict[str, Any]], kind: str, misspell: Any
) -> None:
    (document, *_) = of_kind(overlay, kind)
    validate_custom(document)
    broken = copy.deepcopy(document)
    misspell(broken)
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        validate_custom(broken)
    # the upstream schema alone would have let it through: the closing is what catches it
    validate_custom(broken, strict=False)


def test_crd_validation_catches_a_wrong_type(overlay: list[dict[str, Any]]) -> None:
    document = copy.deepcopy(of_kind(overlay, "ScaledObject")[0])
    validate_custom(document)
    document["spec"]["triggers"][0]["metadata"]["allowIdleConsumers"] = False  # not "false"
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        validate_custom(document)


def test_overlay_renders_valid_manifests(overlay: list[dict[str, Any]]) -> None:
    kinds = sorted(doc["kind"] for doc in overlay)
    for kind, count in {
        "Deployment": len(SERVICES),
        "PodDisruptionBudget": len(SERVICES),
        "ScaledObject": len(SERVICES),
        "TriggerAuthentication": 1,
        "ServiceMonitor": 1,
        "PrometheusRule": 1,
    }.items():
        assert kinds.count(kind) == count, (kind, kinds)
    for doc in overlay:
        if (doc["apiVersion"], doc["kind"]) in CRD_FILES:
            validate_custom(doc)
        else:
            validate_kubernetes(doc)  # an unknown kind raises SchemaNotFoundError
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "waybill", doc["metadata"]["name"]
            assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "waybill"


# --- KEDA ---------------------------------------------------------------------------------


def scaled_object_for(docs: list[dict[str, Any]], service: str) -> dict[str, Any]:
    matches = [
        d for d in of_kind(docs, "ScaledObject") if d["spec"]["scaleTargetRef"]["name"] == service
    ]
    assert len(matches) == 1, f"{len(matches)} ScaledObjects scale {service}"
    return matches[0]


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_scales_on_the_lag_of_its_own_consumer_group(
    overlay: list[dict[str, Any]],
    secret_template: dict[str, Any],
    service: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scaled = scaled_object_for(overlay, service)
    target = scaled["spec"]["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment")) == (
        "apps/v1",
        "Deployment",
    )
    deployment = find(overlay, "Deployment", target["name"])
    (container,) = containers_of(deployment)
    assert container["args"] == ["run", service], "the target runs another service"
    kafka, env = kafka_settings(deployment, overlay, secret_template, monkeypatch)

    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    unknown = set(metadata) - KEDA_KAFKA_METADATA
    assert not unknown, f"KEDA's kafka scaler reads no {sorted(unknown)}"

    group, _ = consumer_group(service)
    assert metadata["consumerGroup"] == kafka.topic_prefix + group
    # the brokers the service itself uses, read by KEDA from the Deployment's environment
    assert "bootstrapServers" not in metadata
    assert env[metadata["bootstrapServersFromEnv"]] == kafka.bootstrap
    # every topic of the group: the lag of any of them is work for this service
    assert not {"topic", "topicFromEnv", "limitToPartitionsWithLag"} & set(metadata)
    assert metadata["allowIdleConsumers"] == "false"
    assert metadata["offsetResetPolicy"] == consumers_offset_reset()
    settings = parse_settings(monkeypatch, settings_class(service), env)
    # a replica has up to a batch in flight anyway: that alone must not add replicas
    assert int(metadata["lagThreshold"]) >= settings.consumer_batch_max


@pytest.mark.parametrize("service", SERVICES)
def test_scaling_is_bounded_by_the_partitions_and_the_hpa_owns_the_replicas(
    overlay: list[dict[str, Any]],
    service: str,
) -> None:
    spec = scaled_object_for(overlay, service)["spec"]
    partitions = int(
        find(overlay, "ConfigMap", "waybill-config")["data"]["WAYBILL_KAFKA_TOPIC_PARTITIONS"]
    )
    # minReplicaCount 0 would stop the HTTP API and the outbox relay with the consumers
    assert "idleReplicaCount" not in spec
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    # a replica count in the Deployment would be put back at every apply, against the HPA
    assert "replicas" not in find(overlay, "Deployment", service)["spec"]
    # scaling down is a rebalance too: not faster than a pod at a time
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert all(p["type"] == "Pods" and p["value"] == 1 for p in scale_down["policies"])


def test_base_keeps_its_fixed_replicas(base: list[dict[str, Any]]) -> None:
    # without KEDA nothing else sets them
    for service in SERVICES:
        assert find(base, "Deployment", service)["spec"]["replicas"] >= 2


def secret_ref(container: dict[str, Any], variable: str) -> tuple[str, str]:
    (item,) = [e for e in container["env"] if e["name"] == variable]
    ref = item["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


@pytest.mark.parametrize("service", SERVICES)
def test_keda_logs_in_to_kafka_as_the_service_does(
    overlay: list[dict[str, Any]],
    secret_template: dict[str, Any],
    service: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (trigger,) = scaled_object_for(overlay, service)["spec"]["triggers"]
    auth_ref = trigger["authenticationRef"]
    assert auth_ref.get("kind", "TriggerAuthentication") == "TriggerAuthentication"
    auth = find(overlay, "TriggerAuthentication", auth_ref["name"])["spec"]
    assert set(auth) == {"secretTargetRef"}
    refs = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["secretTargetRef"]}
    assert not set(refs) - KEDA_KAFKA_AUTH

    deployment = find(overlay, "Deployment", service)
    (container,) = containers_of(deployment)
    kafka, _ = kafka_settings(deployment, overlay, secret_template, monkeypatch)
    metadata = trigger["metadata"]
    uses_tls = kafka.security in {"SSL", "SASL_SSL"}
    assert metadata.get("tls", "disable") == ("enable" if uses_tls else "disable")
    if kafka.security.startswith("SASL"):
        assert metadata["sasl"] == KEDA_SASL[kafka.sasl_mechanism]
        assert refs["username"] == secret_ref(container, "WAYBILL_KAFKA_USERNAME")
        assert refs["password"] == secret_ref(container, "WAYBILL_KAFKA_PASSWORD")
        for name, key in (refs["username"], refs["password"]):
            assert name == secret_template["metadata"]["name"]
            assert key in secret_template["stringData"], key
    else:
        assert metadata.get("sasl", "none") == "none"
    if uses_tls and kafka.cafile is not None:
        # the CA bundle the pod mounts at WAYBILL_KAFKA_CAFILE's folder
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        (mount,) = [
            m for m in container["volumeMounts"] if m["mountPath"] == str(kafka.cafile.parent)
        ]
        secret = volumes[mount["name"]]["secret"]["secretName"]
        assert refs["ca"] == (secret, kafka.cafile.name)


# --- PodDisruptionBudgets -------------------------------------------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = (
            expression["key"],
            expression["operator"],
            expression.get("values", []),
        )
        if not {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]:
            return False
    return True


@pytest.mark.parametrize("which", ["base", "sandbox_overlay", "overlay"])
def test_each_disruption_budget_covers_the_pods_of_one_service(
    which: str, request: pytest.FixtureRequest
) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(which)
    deployments = of_kind(docs, "Deployment")
    covered: list[str] = []
    for budget in of_kind(docs, "PodDisruptionBudget"):
        selected = [
            d["metadata"]["name"]
            for d in deployments
            if selects(budget["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(selected) == 1, f"PodDisruptionBudget/{budget['metadata']['name']}: {selected}"
        deployment = find(docs, "Deployment", selected[0])
        # the very pods of that Deployment: its own selector
        assert budget["spec"]["selector"] == deployment["spec"]["selector"]
        assert budget["spec"]["maxUnavailable"] == 1
        covered += selected
    assert sorted(covered) == sorted(SERVICES), "one budget per service, none for the sandbox"


def test_a_disruption_leaves_a_pod_of_every_service_serving(
    base: list[dict[str, Any]], overlay: list[dict[str, Any]]
) -> None:
    for service in SERVICES:
        budget = find(overlay, "PodDisruptionBudget", service)["spec"]["maxUnavailable"]
        assert find(base, "Deployment", service)["spec"]["replicas"] - budget >= 1
        assert scaled_object_for(overlay, service)["spec"]["minReplicaCount"] - budget >= 1


# --- ServiceMonitor ---------------------------------------------------------------------------


def prometheus_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    return config


def prometheus_job_names() -> dict[str, str]:
    """The job name prometheus.yml scrapes each service under, by the target's host."""
    jobs = {}
    for job in prometheus_config()["scrape_configs"]:
        ((target,),) = [static["targets"] for static in job["static_configs"]]
        jobs[target.split(":")[0]] = job["job_name"]
    assert set(jobs) == set(SERVICES), jobs
    return jobs


@pytest.fixture(scope="module")
def service_monitor(overlay: list[dict[str, Any]]) -> dict[str, Any]:
    (monitor,) = of_kind(overlay, "ServiceMonitor")
    spec: dict[str, Any] = monitor["spec"]
    return spec


def test_the_service_monitor_selects_the_four_services_and_not_the_sandbox(
    overlay: list[dict[str, Any]],
    sandbox_overlay: list[dict[str, Any]],
    service_monitor: dict[str, Any],
) -> None:
    assert "namespaceSelector" not in service_monitor, "its own namespace, waybill"
    selected = [
        s["metadata"]["name"]
        for s in of_kind(overlay, "Service")
        if selects(service_monitor["selector"], s["metadata"]["labels"])
    ]
    assert sorted(selected) == sorted(SERVICES)
    sandbox = find(sandbox_overlay, "Service", "carrier-sandbox")
    assert not selects(service_monitor["selector"], sandbox["metadata"]["labels"])


@pytest.mark.parametrize("service", SERVICES)
def test_the_service_monitor_scrapes_metrics_with_the_ops_token(
    overlay: list[dict[str, Any]],
    secret_template: dict[str, Any],
    service_monitor: dict[str, Any],
    service: str,
) -> None:
    (endpoint,) = service_monitor["endpoints"]
    ports = {p["name"]: p for p in find(overlay, "Service", service)["spec"]["ports"]}
    assert endpoint["port"] in ports
    (container,) = containers_of(find(overlay, "Deployment", service))
    assert ports[endpoint["port"]]["targetPort"] in {p["name"] for p in container["ports"]}
    assert endpoint.get("path", "/metrics") == "/metrics"
    assert endpoint.get("scheme", "http") == "http"
    assert endpoint["interval"] == prometheus_config()["global"]["scrape_interval"]
    authorization = endpoint["authorization"]
    assert authorization.get("type", "Bearer") == "Bearer"
    credentials = authorization["credentials"]
    # the Secret and key the service reads its ops token from
    assert (credentials["name"], credentials["key"]) == secret_ref(container, "WAYBILL_TOKEN_OPS")
    assert credentials["key"] in secret_template["stringData"]


def sanitize(label: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str]:
    """Prometheus' target relabelling, for the actions the ServiceMonitor uses."""
    labels = dict(labels)
    for config in configs:
        action = config.get("action", "replace").lower()
        regex = re.compile(config.get("regex", "(.*)"))
        if action == "replace":
            sources = config.get("sourceLabels", [])
            value = config.get("separator", ";").join(labels.get(name, "") for name in sources)
            match = regex.fullmatch(value)
            if match is None:
                continue
            # Prometheus' $1 and ${1} in Python's spelling
            template = re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", config.get("replacement", "$1"))
            replacement = match.expand(template)
            if replacement:
                labels[config["targetLabel"]] = replacement
            else:
                labels.pop(config["targetLabel"], None)
        elif action == "labeldrop":
            labels = {name: v for name, v in labels.items() if not regex.fullmatch(name)}
        else:
            raise AssertionError(f"relabel action {action!r} is not simulated here")
    return labels


def target_labels(service: dict[str, Any], endpoint: dict[str, Any]) -> dict[str, str]:
    """The labels a scraped target of ``service`` gets: those the Prometheus Operator sets
    before the endpoint's relabelings (generateServiceMonitorConfig in
    pkg/prometheus/promcfg.go, v0.93.0), then the relabelings, then Prometheus' defaults."""
    name = service["metadata"]["name"]
    labels = {
        f"__meta_kubernetes_service_label_{sanitize(k)}": v
        for k, v in service["metadata"]["labels"].items()
    }
    labels |= {
        "__address__": "10.1.2.3:8080",
        "__meta_kubernetes_service_name": name,
        "namespace": service["metadata"]["namespace"],
        "service": name,
        "pod": f"{name}-7d4b9-x2x5q",
        "container": name,
        "job": name,
        "endpoint": endpoint["port"],
    }
    labels = relabel(labels, endpoint.get("relabelings", []))
    labels.setdefault("instance", labels["__address__"])
    return {k: v for k, v in labels.items() if not k.startswith("__")}


def test_the_relabel_simulation_follows_prometheus() -> None:
    labels = {"a": "x", "b": "y"}
    joined = relabel(
        labels, [{"sourceLabels": ["a", "b"], "targetLabel": "c", "replacement": "${1}!"}]
    )
    assert joined["c"] == "x;y!"
    assert "c" not in relabel(labels, [{"sourceLabels": ["a"], "regex": "z", "targetLabel": "c"}])
    assert relabel(labels, [{"regex": "a", "action": "labeldrop"}]) == {"b": "y"}


def test_the_scraped_series_carry_the_labels_the_alerts_query(
    overlay: list[dict[str, Any]], service_monitor: dict[str, Any], alerts: dict[str, Any]
) -> None:
    (endpoint,) = service_monitor["endpoints"]
    expressions = [str(rule["expr"]) for group in alerts["groups"] for rule in group["rules"]]
    job_matchers = [m for expr in expressions for m in re.findall(r'job=~"([^"]*)"', expr)]
    grouped_by = {
        label.strip()
        for expr in expressions
        for labels in re.findall(r"\bby \(([^)]*)\)", expr)
        for label in labels.split(",")
    }
    assert job_matchers and "service" in grouped_by  # else the checks below prove nothing
    jobs = prometheus_job_names()
    for service in SERVICES:
        labels = target_labels(find(overlay, "Service", service), endpoint)
        # as under prometheus.yml: the alerts on `up` and restarts select by job
        assert labels["job"] == jobs[service]
        assert all(re.fullmatch(matcher, labels["job"]) for matcher in job_matchers)
        # a target label of the same name would rename the metric's own label to exported_*
        clashing = set(labels) & grouped_by
        assert not clashing, f"target labels {sorted(clashing)} would shadow the metrics' own"


# --- PrometheusRule -----------------------------------------------------------------------------


def test_the_prometheus_rule_carries_exactly_the_alert_rules(
    overlay: list[dict[str, Any]], alerts: dict[str, Any]
) -> None:
    (rule,) = of_kind(overlay, "PrometheusRule")
    assert rule["spec"]["groups"] == alerts["groups"]
    assert set(alerts) == {"groups"}


def test_the_committed_prometheus_rule_is_up_to_date() -> None:
    expected = render_prometheus_rule((PROMETHEUS_DIR / "alerts.yml").read_text())
    assert PROMETHEUS_RULE_FILE.read_text() == expected, "run `waybill prometheus-rule`"


def test_the_prometheus_rule_command_writes_and_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alerts_file = tmp_path / "alerts.yml"
    alerts_file.write_text((PROMETHEUS_DIR / "alerts.yml").read_text())
    output = tmp_path / "rule.yaml"

    def run(*, check: bool) -> int:
        args = argparse.Namespace(alerts=str(alerts_file), output=str(output), check=check)
        return cli.cmd_prometheus_rule(args)

    assert run(check=True) == 1, "a missing file is stale"
    assert run(check=False) == 0
    assert run(check=True) == 0
    written = yaml.safe_load(output.read_text())
    assert written["spec"]["groups"] == yaml.safe_load(alerts_file.read_text())["groups"]
    alerts_file.write_text(
        alerts_file.read_text().replace("severity: critical", "severity: page", 1)
    )
    assert run(check=True) == 1
    assert "is stale" in capsys.readouterr().err
    alerts_file.write_text("groups: []\nextra: 1\n")
    with pytest.raises(ValueError, match="nothing else"):
        run(check=False)
