"""The kwok control plane behaves like a GPU cluster: RBAC is enforced, pods on fake GPU
nodes become Ready, the scheduler refuses pods that no node has GPUs for, Jobs complete."""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.kube import Kubectl
from fixtures.waiting import wait_for

pytestmark = pytest.mark.kwok

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def pod_spec(gpus: int, tolerate_gpu_taint: bool = True) -> dict[str, Any]:
    """A one-container pod spec asking for `gpus` nvidia.com/gpu."""
    container: dict[str, Any] = {"name": "main", "image": "registry.invalid/never-pulled:1"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    spec: dict[str, Any] = {"containers": [container]}
    if tolerate_gpu_taint:
        spec["tolerations"] = [GPU_TOLERATION]
    return spec


@pytest.fixture
def namespace(kwok_kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace, deleted after the test."""
    name = f"harness-{uuid.uuid4().hex[:8]}"
    kwok_kubectl("create", "namespace", name)
    yield name
    kwok_kubectl("delete", "namespace", name, "--wait=false")


def condition_of(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def test_fake_gpu_nodes_are_ready_tainted_and_advertise_gpus(kwok_kubectl: Kubectl) -> None:
    nodes = kwok_kubectl.json("get", "nodes", "-l", "nvidia.com/gpu.present=true")["items"]
    assert nodes, "no node labelled nvidia.com/gpu.present=true"
    for node in nodes:
        name = node["metadata"]["name"]
        assert condition_of(node, "Ready")["status"] == "True", f"{name} is not Ready"
        assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) >= 1, name
        taints = node["spec"].get("taints", [])
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in taints


def bearer_kubectl(
    kubectl: Kubectl, token: str, workdir: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """kubectl that authenticates with a bearer token only (no client certificate)."""
    config = kubectl.json("config", "view", "--raw", "--minify", "--flatten")
    cluster = config["clusters"][0]["cluster"]
    ca = workdir / "ca.crt"
    ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(kubectl.binary),
                "--kubeconfig",
                "/dev/null",
                "--server",
                cluster["server"],
                "--certificate-authority",
                str(ca),
                "--token",
                token,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    return run


def test_rbac_forbids_a_service_account_until_a_role_allows_it(
    kwok_kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kwok_kubectl("create", "serviceaccount", "reader", "-n", namespace)
    user = f"system:serviceaccount:{namespace}:reader"
    can_i = ["auth", "can-i", "list", "pods", "-n", namespace, "--as", user]
    denied = kwok_kubectl.run(*can_i, check=False)
    assert denied.returncode == 1 and denied.stdout.strip() == "no", denied

    token = kwok_kubectl("create", "token", "reader", "-n", namespace).strip()
    as_reader = bearer_kubectl(kwok_kubectl, token, tmp_path)
    forbidden = as_reader("get", "pods", "-n", namespace)
    assert forbidden.returncode != 0
    assert "forbidden" in forbidden.stderr.lower(), forbidden.stderr
    assert user in forbidden.stderr, "the apiserver did not authenticate the token"

    kwok_kubectl(
        "create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace
    )
    kwok_kubectl(
        "create",
        "rolebinding",
        "reader",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:reader",
        "-n",
        namespace,
    )
    # The authorizer reads RBAC objects from an informer: allow it a moment to see them.
    wait_for(
        lambda: kwok_kubectl.run(*can_i, check=False).stdout.strip() == "yes",
        "`kubectl auth can-i` to say yes after the RoleBinding",
        timeout=15,
    )
    allowed = wait_for(
        lambda: (r := as_reader("get", "pods", "-n", namespace)).returncode == 0 and r,
        "the token's request to be allowed after the RoleBinding",
        timeout=15,
    )
    assert "forbidden" not in allowed.stderr.lower()
    # The Role allows pods only, not secrets: the token still gets Forbidden there.
    secrets = as_reader("get", "secrets", "-n", namespace)
    assert secrets.returncode != 0 and "forbidden" in secrets.stderr.lower()


def test_gpu_deployment_gets_ready_pods_on_gpu_nodes(kwok_kubectl: Kubectl, namespace: str) -> None:
    replicas = 2
    kwok_kubectl.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "gpu-app", "namespace": namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "gpu-app"}},
                "template": {"metadata": {"labels": {"app": "gpu-app"}}, "spec": pod_spec(gpus=1)},
            },
        }
    )
    kwok_kubectl("rollout", "status", "deployment/gpu-app", "-n", namespace, "--timeout=60s")
    pods = kwok_kubectl.json("get", "pods", "-n", namespace, "-l", "app=gpu-app")["items"]
    assert len(pods) == replicas
    nodes = {pod["spec"]["nodeName"] for pod in pods}
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert condition_of(pod, "Ready")["status"] == "True"
    gpu_nodes = {
        n["metadata"]["name"]
        for n in kwok_kubectl.json("get", "nodes", "-l", "nvidia.com/gpu.present=true")["items"]
    }
    assert nodes <= gpu_nodes, f"pods ran on {nodes}, not on GPU nodes {gpu_nodes}"
    # Each node has one GPU, so the scheduler must spread the two pods.
    assert len(nodes) == replicas


def unschedulable_message(kubectl: Kubectl, namespace: str, pod: str) -> str | None:
    scheduled = condition_of(kubectl.json("get", "pod", pod, "-n", namespace), "PodScheduled")
    if scheduled and scheduled["status"] == "False" and scheduled.get("reason") == "Unschedulable":
        return scheduled["message"]
    return None


def test_two_gpu_pod_on_one_gpu_nodes_is_unschedulable(
    kwok_kubectl: Kubectl, namespace: str
) -> None:
    kwok_kubectl.apply(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big"}, "spec": pod_spec(gpus=2)},
        namespace=namespace,
    )
    message = wait_for(
        lambda: unschedulable_message(kwok_kubectl, namespace, "big"),
        "the scheduler to mark the 2-GPU pod Unschedulable",
        timeout=30,
    )
    assert "Insufficient nvidia.com/gpu" in message, message
    pod = kwok_kubectl.json("get", "pod", "big", "-n", namespace)
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_gpu_pod_without_toleration_is_kept_off_gpu_nodes(
    kwok_kubectl: Kubectl, namespace: str
) -> None:
    kwok_kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "intolerant"},
            "spec": pod_spec(gpus=1, tolerate_gpu_taint=False),
        },
        namespace=namespace,
    )
    message = wait_for(
        lambda: unschedulable_message(kwok_kubectl, namespace, "intolerant"),
        "the scheduler to mark the untolerating pod Unschedulable",
        timeout=30,
    )
    assert "untolerated taint" in message and "nvidia.com/gpu" in message, message


def test_job_pod_completes(kwok_kubectl: Kubectl, namespace: str) -> None:
    spec = pod_spec(gpus=0, tolerate_gpu_taint=False)
    spec["restartPolicy"] = "Never"
    kwok_kubectl.apply(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "fetch"},
            "spec": {"backoffLimit": 0, "template": {"spec": spec}},
        },
        namespace=namespace,
    )
    kwok_kubectl("wait", "--for=condition=Complete", "job/fetch", "-n", namespace, "--timeout=60s")
    pods = kwok_kubectl.json("get", "pods", "-n", namespace, "-l", "job-name=fetch")["items"]
    assert [pod["status"]["phase"] for pod in pods] == ["Succeeded"]


def test_claim_of_the_default_storage_class_binds_and_its_pod_runs(
    kwok_kubectl: Kubectl, namespace: str
) -> None:
    kwok_kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "cache"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        namespace=namespace,
    )
    spec = pod_spec(gpus=1)
    spec["volumes"] = [{"name": "cache", "persistentVolumeClaim": {"claimName": "cache"}}]
    kwok_kubectl.apply(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user"}, "spec": spec},
        namespace=namespace,
    )
    kwok_kubectl("wait", "--for=condition=Ready", "pod/user", "-n", namespace, "--timeout=60s")
    claim = kwok_kubectl.json("get", "pvc", "cache", "-n", namespace)
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["storageClassName"] == "kwok-volume"
