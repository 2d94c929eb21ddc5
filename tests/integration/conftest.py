"""The Kubernetes manifests rendered once per module, for the tests of deploy/k8s
(test_deploy_files.py for the base and the sandbox overlay, test_k8s_operators.py for the
keda-prometheus overlay)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.integration.test_deploy_files import K8S, SECRET_TEMPLATE, kustomize


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return kustomize(K8S / "base")


@pytest.fixture(scope="module")
def sandbox_overlay() -> list[dict[str, Any]]:
    return kustomize(K8S / "overlays" / "sandbox")


@pytest.fixture(scope="module")
def secret_template() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(SECRET_TEMPLATE.read_text())
    return document
