"""A two-node kind cluster (KIND_NODES=2) is one cluster: every node is Ready with a pod range of
its own, pods on different nodes reach each other by pod IP with their own source address,
Services and cluster DNS answer across nodes, a NodePort on the control plane reaches a pod on
the worker, every node allocates fake GPUs, the `shared` class is shared across nodes, and the
route agent puts back a route that goes missing.

The module creates its own cluster (scripts/kind.sh up with KIND_NODES=2) once, beside the
session's single-node one: EXO_KIND_MULTINODE_CLUSTER names it (default <KIND_CLUSTER>-multinode)
and EXO_KIND_MULTINODE_NODEPORT is its host port (default EXO_KIND_NODEPORT + 100). It is
deleted at the end unless it was running before or EXO_KIND_KEEP=1."""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.kube import Kubectl, exported_kubeconfig
from fixtures.paths import REPO_ROOT
from fixtures.waiting import wait_for
from kind_harness import docker, pod, run_to_completion, shared_volume, token_image

pytestmark = pytest.mark.kind

CLUSTER = os.environ.get(
    "EXO_KIND_MULTINODE_CLUSTER", f"{os.environ.get('KIND_CLUSTER', 'exo')}-multinode"
)
NODEPORT_HOST_PORT = int(
    os.environ.get(
        "EXO_KIND_MULTINODE_NODEPORT", int(os.environ.get("EXO_KIND_NODEPORT", "30080")) + 100
    )
)
CLUSTER_ENV = {
    **os.environ,
    "KIND_CLUSTER": CLUSTER,
    "KIND_NODES": "2",
    "EXO_KIND_NODEPORT": str(NODEPORT_HOST_PORT),
}
POD_CIDR = "10.244.0.0/16"


def kind_script(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "kind.sh"), *args],
        capture_output=True, text=True, timeout=timeout, env=CLUSTER_ENV,
    )  # fmt: skip


@pytest.fixture(scope="module")
def kubectl() -> Iterator[Kubectl]:
    """kubectl on the two-node cluster, created for this module unless it already runs."""
    was_up = kind_script("status", timeout=60).returncode == 0
    result = kind_script("up")
    if result.returncode != 0:
        pytest.fail(f"`KIND_NODES=2 scripts/kind.sh up` failed:\n{result.stderr[-4000:]}")
    yield Kubectl(exported_kubeconfig(result.stdout, "KIND_NODES=2 scripts/kind.sh up"))
    keep = os.environ.get("EXO_KIND_KEEP", "")
    if keep == "0" or (keep == "" and not was_up):
        kind_script("down", timeout=300)


@pytest.fixture(scope="module")
def nodes(kubectl: Kubectl) -> dict[str, dict[str, Any]]:
    """The cluster's nodes by role: {"control-plane": node, "worker": node}."""
    by_role = {}
    for node in kubectl.json("get", "nodes")["items"]:
        labels = node["metadata"]["labels"]
        by_role[
            "control-plane" if "node-role.kubernetes.io/control-plane" in labels else "worker"
        ] = node
    assert set(by_role) == {"control-plane", "worker"}, list(by_role)
    return by_role


@pytest.fixture(scope="module")
def image(kubectl: Kubectl) -> Iterator[tuple[str, str]]:
    """The harness's token image, loaded into both nodes; returns (image, token)."""

    def load(image: str) -> None:
        result = kind_script("load", image, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]

    with token_image(load) as built:
        yield built


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"multinode-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def serve_token(
    kubectl: Kubectl, namespace: str, image: str, on: str, service_type: str = "ClusterIP"
) -> str:
    """A busybox httpd serving /token on node `on` (logging each client's address), behind a
    Service `web` (a NodePort one takes NodePort 30080); returns the server's pod IP."""
    command = "mkdir -p /www && cp /token /www/ && exec busybox httpd -f -vv -p 8080 -h /www"
    probe = {"readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}
    kubectl.apply(
        pod("web", image, command, on, restartPolicy="Always", container=probe), namespace
    )
    port: dict[str, Any] = {"port": 80, "targetPort": 8080}
    if service_type == "NodePort":
        port["nodePort"] = 30080
    service = {"type": service_type, "selector": {"app": "web"}, "ports": [port]}
    kubectl.apply(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": service},
        namespace,
    )
    kubectl("-n", namespace, "wait", "--for=condition=Ready", "pod/web", "--timeout=120s")
    return kubectl("-n", namespace, "get", "pod", "web", "-o", "jsonpath={.status.podIP}")


def http_get(host: str) -> str:
    """A bash command that GETs /token from host:80 or host:8080 (host[:port]) and prints it all."""
    name, _, port = host.partition(":")
    request = f"printf 'GET /token HTTP/1.0\\r\\nHost: {name}\\r\\n\\r\\n' >&3"
    return f"exec 3<>/dev/tcp/{name}/{port or 80} && {request} && cat <&3"


def test_every_node_is_ready_with_a_pod_range_of_its_own(
    kubectl: Kubectl, nodes: dict[str, dict[str, Any]]
) -> None:
    ranges = {role: node["spec"]["podCIDR"] for role, node in nodes.items()}
    assert len(set(ranges.values())) == 2, ranges
    for node in nodes.values():
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True", node["metadata"]["name"]
    # The control plane runs pods too, as on the single-node cluster.
    taints = nodes["control-plane"]["spec"].get("taints", [])
    assert not [t for t in taints if t["effect"] in ("NoSchedule", "NoExecute")], taints


def test_pods_on_different_nodes_reach_each_other_by_pod_ip_with_their_own_address(
    kubectl: Kubectl, nodes: dict[str, dict[str, Any]], namespace: str, image: tuple[str, str]
) -> None:
    tag, token = image
    server_ip = serve_token(kubectl, namespace, tag, nodes["worker"]["metadata"]["name"])
    cp = nodes["control-plane"]["metadata"]["name"]
    client = pod("client", tag, http_get(f"{server_ip}:8080"), cp)
    log = run_to_completion(kubectl, namespace, client)
    assert log.rstrip().endswith(token), log
    # The server saw the client's pod IP: traffic between pods is routed, not masqueraded.
    client_ip = kubectl("-n", namespace, "get", "pod", "client", "-o", "jsonpath={.status.podIP}")
    assert client_ip in kubectl("-n", namespace, "logs", "web")


@pytest.mark.parametrize("client_role", ["control-plane", "worker"])
def test_service_dns_name_answers_from_either_node(
    kubectl: Kubectl,
    nodes: dict[str, dict[str, Any]],
    namespace: str,
    image: tuple[str, str],
    client_role: str,
) -> None:
    tag, token = image
    serve_token(kubectl, namespace, tag, nodes["worker"]["metadata"]["name"])
    fqdn = f"web.{namespace}.svc.cluster.local"
    client_node = nodes[client_role]["metadata"]["name"]
    # glibc's resolver (bash's /dev/tcp, getent) asks CoreDNS, which runs on either node.
    command = f"getent hosts {fqdn} && {http_get(fqdn)}"
    log = run_to_completion(kubectl, namespace, pod("client", tag, command, client_node))
    assert "200 OK" in log and log.rstrip().endswith(token), log


def test_nodeport_on_the_control_plane_reaches_a_pod_on_the_worker(
    kubectl: Kubectl, nodes: dict[str, dict[str, Any]], namespace: str, image: tuple[str, str]
) -> None:
    tag, token = image
    serve_token(kubectl, namespace, tag, nodes["worker"]["metadata"]["name"], "NodePort")
    url = f"http://127.0.0.1:{NODEPORT_HOST_PORT}/token"

    def answer() -> str:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode().strip()
        except OSError:
            return ""

    assert wait_for(answer, f"{url} to answer", timeout=60) == token


@pytest.mark.parametrize("role", ["control-plane", "worker"])
def test_a_pod_asking_for_a_gpu_gets_one_on_each_node(
    kubectl: Kubectl,
    nodes: dict[str, dict[str, Any]],
    namespace: str,
    image: tuple[str, str],
    role: str,
) -> None:
    tag, _ = image
    node = nodes[role]
    assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) > 0
    gpu = {"container": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}
    manifest = pod("gpu", tag, "echo $NVIDIA_VISIBLE_DEVICES", node["metadata"]["name"], **gpu)
    log = run_to_completion(kubectl, namespace, manifest)
    assert re.fullmatch(r"fake-gpu-\d+", log.strip()), log


def test_shared_class_volume_written_on_one_node_is_read_on_the_other(
    kubectl: Kubectl, nodes: dict[str, dict[str, Any]], namespace: str, image: tuple[str, str]
) -> None:
    tag, token = image
    volume = shared_volume(kubectl, namespace)
    writer_node = nodes["worker"]["metadata"]["name"]
    reader_node = nodes["control-plane"]["metadata"]["name"]
    run_to_completion(
        kubectl, namespace, pod("writer", tag, "cp /token /data/t", writer_node, **volume)
    )
    reader = pod("reader", tag, "cat /data/t", reader_node, **volume)
    assert run_to_completion(kubectl, namespace, reader).strip() == token


def test_each_node_routes_the_other_nodes_pods_and_masquerades_only_leaving_traffic(
    nodes: dict[str, dict[str, Any]],
) -> None:
    for role, other in (("control-plane", "worker"), ("worker", "control-plane")):
        name = nodes[role]["metadata"]["name"]
        other_range = nodes[other]["spec"]["podCIDR"]
        other_ip = next(
            a["address"] for a in nodes[other]["status"]["addresses"] if a["type"] == "InternalIP"
        )
        assert f"via {other_ip}" in docker("exec", name, "ip", "route", "show", other_range)
        own_range = nodes[role]["spec"]["podCIDR"]
        rule = ["-s", own_range, "!", "-d", POD_CIDR, "-m", "comment"]
        rule += [
            "--comment",
            "exo-route-agent: pod traffic leaving the cluster",
            "-j",
            "MASQUERADE",
        ]
        docker("exec", name, "iptables", "-w", "-t", "nat", "-C", "POSTROUTING", *rule)


def test_route_agent_puts_back_a_route_that_went_missing(
    nodes: dict[str, dict[str, Any]],
) -> None:
    worker = nodes["worker"]["metadata"]["name"]
    control_plane_range = nodes["control-plane"]["spec"]["podCIDR"]
    docker("exec", worker, "ip", "route", "del", control_plane_range)
    wait_for(
        lambda: "via" in docker("exec", worker, "ip", "route", "show", control_plane_range),
        "the route agent to restore the route to the control plane's pods",
        timeout=30,
    )
