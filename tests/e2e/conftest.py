"""Fixtures of the e2e tier: a cluster with the project's images, the chart installed, a namespace
that enforces Pod Security "restricted", and an in-cluster HTTP server holding the Gemma GGUF.

The cluster: EXO_E2E_KUBECONFIG when set (a cluster of your own, which must be able to pull the
images named by EXO_E2E_OPERATOR_IMAGE and EXO_E2E_RUNTIME_IMAGE); otherwise the project's kind
cluster (scripts/kind.sh), into which scripts/images.sh builds and loads the images.
EXO_E2E_KEEP=1 leaves the release and the namespace behind for a look after a failure.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.cluster_lease import kubeconfig_from_env
from fixtures.helm import CHART, Helm
from fixtures.kind import start_kind
from fixtures.kube import Kubectl
from fixtures.model_server import put_on_model_server, start_model_server

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"


def keep() -> bool:
    return os.environ.get("EXO_E2E_KEEP") == "1"


def run_script(*args: str, timeout: float) -> str:
    """Runs a project script; its failure fails the test with the script's last words."""
    result = subprocess.run(
        ["bash", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"`{' '.join(args)}` exited {result.returncode}:\n{result.stderr[-4000:]}",
            pytrace=False,
        )
    return result.stdout


@pytest.fixture(scope="session")
def e2e_kubeconfig(request) -> Path:
    given = kubeconfig_from_env("EXO_E2E_KUBECONFIG")
    if given:
        return given
    # The project's kind cluster, left running at the end, with the images built and loaded.
    kubeconfig = start_kind()
    run_script("scripts/images.sh", "build", timeout=1800)
    run_script("scripts/images.sh", "load", timeout=600)
    return kubeconfig


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The operator and runtime image references the release uses."""
    return {
        "operator": os.environ.get("EXO_E2E_OPERATOR_IMAGE", f"exo-operator/operator:{VERSION}"),
        "runtime": os.environ.get("EXO_E2E_RUNTIME_IMAGE", f"exo-operator/runtime:{VERSION}"),
    }


@pytest.fixture(scope="session")
def kubectl(e2e_kubeconfig: Path) -> Kubectl:
    return Kubectl(e2e_kubeconfig)


@pytest.fixture(scope="session")
def e2e_helm(e2e_kubeconfig: Path) -> Helm:
    return Helm(e2e_kubeconfig)


def image_values(prefix: str, reference: str) -> list[str]:
    repository, _, tag = reference.rpartition(":")
    return ["--set", f"{prefix}.repository={repository}", "--set", f"{prefix}.tag={tag}"]


def image_id_annotation(reference: str) -> list[str]:
    """The local image's id as a pod annotation: a rebuilt image keeps its tag, and without a
    changed template a reused cluster would go on running the operator built before."""
    found = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", reference],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if found.returncode != 0:
        return []  # not built here (EXO_E2E_KUBECONFIG and a registry): the tag decides
    image_id = found.stdout.strip().removeprefix("sha256:")[:16]
    return ["--set-string", f"podAnnotations.exo\\.dev/image-id={image_id}"]


@pytest.fixture(scope="session")
def operator_release(
    e2e_helm: Helm, kubectl: Kubectl, images: dict[str, str]
) -> Iterator[dict[str, str]]:
    """The chart installed with the images under test; yields its namespace and Deployment."""
    release = {
        "name": "exo-e2e",
        "namespace": "exo-e2e-system",
        "deployment": "exo-e2e-exo-operator",
    }
    e2e_helm(
        "upgrade", "--install", release["name"], str(CHART), "--namespace", release["namespace"],
        "--create-namespace", *image_values("image", images["operator"]),
        *image_values("runtimeImage", images["runtime"]), "--set", "logLevel=debug",
        *image_id_annotation(images["operator"]), "--wait", "--timeout", "180s",
    )  # fmt: skip
    yield release
    if not keep():
        e2e_helm(
            "uninstall", release["name"], "--namespace", release["namespace"], "--wait", check=False
        )
        kubectl("delete", "namespace", release["namespace"], "--wait=false", check=False)


@pytest.fixture(scope="session")
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A namespace that enforces Pod Security "restricted": every pod in it must be hardened."""
    name = f"exo-e2e-{uuid.uuid4().hex[:6]}"
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
    )
    yield name
    if not keep():
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def model_url(kubectl: Kubectl, namespace: str, images: dict[str, str], gemma_gguf: Path) -> str:
    """An in-cluster URL serving the Gemma GGUF from PyPI (tests/fixtures/model_server.py, which
    `make demo` uses too)."""
    start_model_server(kubectl, namespace, images["runtime"])
    url, _ = put_on_model_server(kubectl, namespace, gemma_gguf, gemma_gguf.name)
    return url


@pytest.fixture(scope="session", name="put_on_model_server")
def put_more_on_model_server(kubectl: Kubectl, namespace: str, model_url: str):
    """Puts more files on the model server: put(local, name) -> (URL, sha256 of what it holds)."""
    return lambda local, name: put_on_model_server(kubectl, namespace, local, name)


@pytest.fixture(scope="session")
def gpus_on_nodes(kubectl: Kubectl) -> int:
    """nvidia.com/gpu the cluster's nodes can allocate (the kind harness's fake device plugin)."""
    nodes = kubectl.json("get", "nodes")["items"]
    return sum(int(n["status"].get("allocatable", {}).get("nvidia.com/gpu", "0")) for n in nodes)
