"""The kind cluster behaves like a small GPU cluster: pods run and log, Services resolve through
cluster DNS, a NodePort answers on the host, PVCs keep data, loaded local images run, and the
fake device plugin's nvidia.com/gpu is allocated by the kubelet and enforced by the scheduler."""

from __future__ import annotations

import os
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.kind import load_image
from fixtures.kube import Kubectl
from fixtures.waiting import wait_for
from kind_harness import (
    claimed_volume,
    docker,
    phase,
    pod,
    run_to_completion,
    shared_volume,
    token_image,
)

pytestmark = pytest.mark.kind

NODEPORT = 30080
NODEPORT_HOST_PORT = int(os.environ.get("EXO_KIND_NODEPORT", "30080"))


@pytest.fixture(scope="module")
def harness_image(kind_kubectl: Kubectl) -> Iterator[tuple[str, str]]:
    """The harness's token image, loaded into the session's cluster; returns (image, token)."""
    with token_image(load_image) as built:
        yield built


@pytest.fixture
def namespace(kind_kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace, deleted after the test."""
    name = f"harness-{uuid.uuid4().hex[:8]}"
    kind_kubectl("create", "namespace", name)
    yield name
    kind_kubectl("delete", "namespace", name, "--wait=false", check=False)


def serve_http(kubectl: Kubectl, namespace: str, image: str, service_type: str) -> None:
    """A busybox httpd pod serving /token, behind a Service named `web` of the given type."""
    kubectl.apply(
        pod(
            "web",
            image,
            "mkdir -p /www && cp /token /www/token && exec busybox httpd -f -p 8080 -h /www",
            restartPolicy="Always",
            container={"readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}},
        ),
        namespace,
    )
    port: dict[str, Any] = {"port": 80, "targetPort": 8080}
    if service_type == "NodePort":
        port["nodePort"] = NODEPORT
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"type": service_type, "selector": {"app": "web"}, "ports": [port]},
    }
    kubectl.apply(service, namespace)
    kubectl(
        "-n", namespace, "wait", "--for=condition=Ready", "pod/web", "--timeout=120s", timeout=130
    )


def test_pod_runs_and_its_log_is_read_back(
    kind_kubectl: Kubectl, namespace: str, harness_image: tuple[str, str]
) -> None:
    image, _ = harness_image
    log = run_to_completion(kind_kubectl, namespace, pod("hello", image, "echo hello from kind"))
    assert log.strip() == "hello from kind"


def test_loaded_local_image_runs(
    kind_kubectl: Kubectl, namespace: str, harness_image: tuple[str, str]
) -> None:
    image, token = harness_image
    log = run_to_completion(kind_kubectl, namespace, pod("token", image, "cat /token"))
    assert log.strip() == token


def test_service_routes_through_cluster_dns(
    kind_kubectl: Kubectl, namespace: str, harness_image: tuple[str, str]
) -> None:
    image, token = harness_image
    serve_http(kind_kubectl, namespace, image, "ClusterIP")
    fqdn = f"web.{namespace}.svc.cluster.local"
    # bash's /dev/tcp resolves the name through the pod's resolv.conf (CoreDNS) with glibc
    # (a statically linked busybox cannot use glibc's resolver).
    request = f"printf 'GET /token HTTP/1.0\\r\\nHost: {fqdn}\\r\\n\\r\\n' >&3"
    client = pod(
        "client",
        image,
        f"getent hosts {fqdn} && exec 3<>/dev/tcp/{fqdn}/80 && {request} && cat <&3",
    )
    log = run_to_completion(kind_kubectl, namespace, client)
    assert "200 OK" in log, log
    assert log.rstrip().endswith(token), log


def test_nodeport_answers_from_the_host(
    kind_kubectl: Kubectl, namespace: str, harness_image: tuple[str, str]
) -> None:
    image, token = harness_image
    serve_http(kind_kubectl, namespace, image, "NodePort")
    url = f"http://127.0.0.1:{NODEPORT_HOST_PORT}/token"

    def answer() -> str:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode().strip()
        except OSError:
            return ""

    assert wait_for(answer, f"{url} to answer", timeout=60) == token


def test_pvc_binds_and_keeps_a_file_across_pod_restarts(
    kind_kubectl: Kubectl, namespace: str, harness_image: tuple[str, str]
) -> None:
    image, token = harness_image
    volume = claimed_volume(kind_kubectl, namespace, "data")
    run_to_completion(
        kind_kubectl, namespace, pod("writer", image, "cp /token /data/kept", **volume)
    )
    kind_kubectl("-n", namespace, "delete", "pod", "writer")
    status = kind_kubectl("-n", namespace, "get", "pvc", "data", "-o", "jsonpath={.status.phase}")
    assert status == "Bound"
    reader = pod("reader", image, "cat /data/kept", **volume)
    assert run_to_completion(kind_kubectl, namespace, reader).strip() == token


def test_shared_class_gives_one_read_write_many_volume_to_two_pods_at_once(
    kind_kubectl: Kubectl, namespace: str, harness_image: tuple[str, str]
) -> None:
    image, token = harness_image
    volume = shared_volume(kind_kubectl, namespace)
    # The holder keeps the volume mounted while a second pod writes into it and a third reads.
    kind_kubectl.apply(
        pod("holder", image, "sleep 300", restartPolicy="Always", **volume), namespace
    )
    kind_kubectl(
        "-n", namespace, "wait", "--for=condition=Ready", "pod/holder", "--timeout=120s",
        timeout=130,
    )  # fmt: skip
    run_to_completion(kind_kubectl, namespace, pod("writer2", image, "cp /token /data/t", **volume))
    reader = pod("reader2", image, "cat /data/t", **volume)
    assert run_to_completion(kind_kubectl, namespace, reader).strip() == token


def test_pod_asking_for_one_gpu_runs_with_an_allocated_device(
    kind_kubectl: Kubectl, namespace: str, harness_image: tuple[str, str]
) -> None:
    image, _ = harness_image
    gpu = {"container": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}
    log = run_to_completion(
        kind_kubectl, namespace, pod("gpu", image, "echo $NVIDIA_VISIBLE_DEVICES", **gpu)
    )
    # The device plugin's Allocate answer reaches the container: the kubelet allocated one device.
    assert log.strip().startswith("fake-gpu-") and "," not in log


def test_pod_asking_for_more_gpus_than_the_node_has_stays_pending(
    kind_kubectl: Kubectl, namespace: str, harness_image: tuple[str, str]
) -> None:
    image, _ = harness_image
    node = kind_kubectl.json("get", "nodes")["items"][0]
    too_many = int(node["status"]["allocatable"]["nvidia.com/gpu"]) + 1
    gpus = {"container": {"resources": {"limits": {"nvidia.com/gpu": str(too_many)}}}}
    kind_kubectl.apply(pod("greedy", image, "true", **gpus), namespace)

    def unschedulable() -> dict[str, Any] | None:
        status = kind_kubectl.json("-n", namespace, "get", "pod", "greedy").get("status", {})
        scheduled = [c for c in status.get("conditions", []) if c["type"] == "PodScheduled"]
        return scheduled[0] if scheduled and scheduled[0]["status"] == "False" else None

    condition = wait_for(unschedulable, "the scheduler to refuse the pod", timeout=60)
    assert condition["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in condition["message"]
    assert phase(kind_kubectl, namespace, "greedy") == "Pending"


def test_device_plugin_registers_again_after_a_kubelet_restart(
    kind_kubectl: Kubectl, namespace: str, harness_image: tuple[str, str]
) -> None:
    image, _ = harness_image
    node = kind_kubectl.json("get", "nodes")["items"][0]["metadata"]["name"]
    # The plugin's pod on that node: on a multi-node cluster the DaemonSet has one per node.
    on_node = kind_kubectl.json(
        "get", "pods", "-n", "kube-system", "-l", "app.kubernetes.io/name=fake-gpu-device-plugin",
        "--field-selector", f"spec.nodeName={node}",
    )["items"]  # fmt: skip
    assert len(on_node) == 1, on_node
    plugin = ["-n", "kube-system", "logs", on_node[0]["metadata"]["name"]]
    restarts_before = kind_kubectl(*plugin).count("registering again")
    # kind's node is a container named after the node; its kubelet is a systemd unit.
    docker("exec", node, "systemctl", "restart", "kubelet")
    wait_for(
        lambda: kind_kubectl(*plugin, check=False).count("registering again") > restarts_before,
        "the device plugin to notice the kubelet restart and register again",
        timeout=120,
    )
    gpu = {"container": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}
    command = "echo $NVIDIA_VISIBLE_DEVICES"
    log = run_to_completion(
        kind_kubectl, namespace, pod("gpu-after-restart", image, command, **gpu)
    )
    assert log.strip().startswith("fake-gpu-")


def test_untranslated_service_ip_traffic_never_leaves_the_node(kind_kubectl: Kubectl) -> None:
    # Checked by rule rather than by sending such a packet: the point is that none ever goes out.
    node = kind_kubectl.json("get", "nodes")["items"][0]["metadata"]["name"]
    for chain in ("FORWARD", "OUTPUT"):
        rule = [chain, "-d", "10.96.0.0/12", "-o", "eth0", "-j", "DROP"]
        docker("exec", node, "iptables", "-w", "-C", *rule)
