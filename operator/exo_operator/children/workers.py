"""The RPC workers of a model split across nodes: a StatefulSet and its headless Service.

Each worker runs `exo-runtime rpc-worker`, llama.cpp's RPC server of the same build as the
head: it holds no model and needs no volume, since the head sends it its share of the tensors.
A StatefulSet gives the workers stable names (`<model>-workers-<i>`) that the head's
`--rpc-workers` list can hold, and a replaced worker comes back under the same name.

A worker group serves one head, and every pod of a Deployment shares one template: two heads
of one Deployment could not be given two groups. So spec.replicas counts groups, each a head
Deployment and a worker StatefulSet of its own (NAME and NAME-workers for group 0, as a model
of one group has them; NAME-gG and NAME-gG-workers for group G), and one headless Service
names every group's workers. Scaling adds or removes whole groups; group 0's objects stay
(with no pod at spec.replicas 0).
"""

import copy
import math
from typing import Any

from kubernetes.utils import parse_quantity

from exo_operator.children import content_hash, owner_reference
from exo_operator.children.placement import GPU_RESOURCE, NO_GPU_ENV
from exo_operator.children.pod_security import (
    SCRATCH_MOUNT,
    SCRATCH_VOLUME,
    container_security_context,
    pod_security_context,
)
from exo_operator.model import ExoModel
from exo_operator.naming import (
    RPC_HEALTH_PORT,
    RPC_PORT,
    WORKER,
    component_labels,
    group_labels,
    group_workers_name,
    worker_address,
    worker_selector,
    workers_name,
)
from exo_operator.settings import OperatorSettings

# A worker only relays tensors and computes: it has no request to drain, so it may stop fast.
WORKER_GRACE_SECONDS = 10
# The weight of the preference to spread a group's workers over nodes: the highest, because a
# group of pods on one node gains nothing from the split but pays for its network hops.
SPREAD_WEIGHT = 100


def group_count(model: ExoModel) -> int:
    """How many groups have objects: one per replica, and group 0's even at replicas 0."""
    return max(1, model.spec.replicas) if model.spec.distributed else 1


def worker_addresses(model: ExoModel, group: int = 0) -> list[str]:
    """A group head's `--rpc-workers` entries, in the order that tensorSplit's entries follow."""
    assert model.spec.distributed is not None
    workers = model.spec.distributed.workers
    return [worker_address(model, i, RPC_PORT, group) for i in range(workers)]


def _worker_resources(model: ExoModel) -> dict[str, Any]:
    """distributed.resources, else the head's CPU and memory, plus gpusPerWorker."""
    spec = model.spec
    assert spec.distributed is not None
    own = spec.distributed.resources
    cpu = own.cpu if own and own.cpu is not None else spec.resources.cpu
    memory = own.memory if own and own.memory is not None else spec.resources.memory
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}
    if spec.worker_gpus():
        limits[GPU_RESOURCE] = str(spec.worker_gpus())
    for name, value in (("cpu", cpu), ("memory", memory)):
        if value is not None:
            requests[name] = limits[name] = str(value)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _worker_args(model: ExoModel) -> list[str]:
    args = ["rpc-worker", "--host", "0.0.0.0", "--port", str(RPC_PORT)]
    cpu = (_worker_resources(model).get("limits") or {}).get("cpu")
    if cpu is not None:
        # One thread per whole CPU of the limit, as the head does: more would just contend.
        args += ["--threads", str(max(1, math.floor(parse_quantity(cpu))))]
    return args


def _placement(model: ExoModel) -> dict[str, Any]:
    """The model's node selector, tolerations and affinity, and a spread of the group."""
    spec = model.spec
    placement: dict[str, Any] = {}
    tolerations = list(spec.tolerations)
    if spec.worker_gpus():
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        placement["tolerations"] = tolerations
    if spec.node_selector:
        placement["nodeSelector"] = dict(spec.node_selector)
    affinity = copy.deepcopy(spec.affinity or {})
    # Over every worker of the model, each group's too: each wants a node's devices to itself.
    # Preferred, not required: where there are fewer nodes than workers (a small or a
    # single-node cluster) the group still runs, only less spread.
    anti = affinity.setdefault("podAntiAffinity", {})
    anti.setdefault("preferredDuringSchedulingIgnoredDuringExecution", []).append(
        {
            "weight": SPREAD_WEIGHT,
            "podAffinityTerm": {
                "labelSelector": {"matchLabels": worker_selector(model)},
                "topologyKey": "kubernetes.io/hostname",
            },
        }
    )
    placement["affinity"] = affinity
    return placement


def _worker_pod_template(
    model: ExoModel, settings: OperatorSettings, group: int = 0
) -> dict[str, Any]:
    spec = model.spec
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}]
    if not spec.worker_gpus():
        env.append(NO_GPU_ENV)
    # The RPC server takes one client at a time behind a tiny accept queue: a TCP probe of its
    # port times out while the head is connected (and a liveness probe would then restart a
    # busy worker). `exo-runtime rpc-worker` answers GET /healthz on the next port instead.
    health = {"httpGet": {"path": "/healthz", "port": "health"}, "timeoutSeconds": 2}
    container: dict[str, Any] = {
        "name": "rpc-worker",
        "image": spec.image or settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["exo-runtime"],
        "args": _worker_args(model),
        "env": env,
        "ports": [
            {"name": "rpc", "containerPort": RPC_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": RPC_HEALTH_PORT, "protocol": "TCP"},
        ],
        "resources": _worker_resources(model),
        "volumeMounts": [SCRATCH_MOUNT],
        "securityContext": container_security_context(),
        # The RPC server answers as soon as it listens: the head's own readiness (after the
        # load and warmup across every worker) is what makes the group Ready.
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**health, "periodSeconds": 10, "failureThreshold": 3},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "metadata": {"labels": component_labels(model, WORKER) | group_labels(group)},
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": pod_security_context(settings.runtime_uid),
            "terminationGracePeriodSeconds": WORKER_GRACE_SECONDS,
            "containers": [container],
            "volumes": [SCRATCH_VOLUME],
            **_placement(model),
        },
    }


def workers_hash(model: ExoModel, settings: OperatorSettings) -> str:
    """A hash of a worker group (its size and group 0's pod template, which every group's
    follows): on the heads' template, so that a changed group rolls its head, which then loads
    onto the new workers."""
    assert model.spec.distributed is not None
    group = [model.spec.distributed.workers, _worker_pod_template(model, settings)]
    return content_hash(group)


def workers_statefulset_for(
    model: ExoModel, settings: OperatorSettings, running: bool = True, group: int = 0
) -> dict[str, Any] | None:
    """A group's worker StatefulSet, or None for a model on one pod.

    With `running` False (the model not cached yet) it holds no pod: workers would only sit on
    their GPUs while the download runs.
    """
    spec = model.spec
    if not spec.distributed:
        return None
    replicas = spec.distributed.workers if running and group < spec.replicas else 0
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": group_workers_name(model, group),
            "namespace": model.namespace,
            "labels": component_labels(model, WORKER) | group_labels(group),
            "ownerReferences": [owner_reference(model)],
        },
        "spec": {
            "replicas": replicas,
            # One headless Service for every group: a worker's DNS name is its pod's name
            # under it, so the groups' names never collide.
            "serviceName": workers_name(model),
            # The head needs every worker at once: start and replace them all in parallel,
            # not one after another.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": worker_selector(model, group)},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": _worker_pod_template(model, settings, group),
        },
    }


def workers_statefulsets_for(
    model: ExoModel, settings: OperatorSettings, running: bool = True
) -> list[dict[str, Any]]:
    """Every group's worker StatefulSet (none for a model on one pod)."""
    groups = range(group_count(model))
    statefulsets = (workers_statefulset_for(model, settings, running, g) for g in groups)
    return [sts for sts in statefulsets if sts]


def workers_service_for(model: ExoModel) -> dict[str, Any] | None:
    """The headless Service that gives each worker of every group its DNS name, or None for a
    one-pod model."""
    if not model.spec.distributed:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": workers_name(model),
            "namespace": model.namespace,
            "labels": component_labels(model, WORKER),
            "ownerReferences": [owner_reference(model)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": worker_selector(model),
            # The head connects while it loads, before a restarted worker has passed its probe;
            # and a worker's readiness must not hide the name the head already holds.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rpc", "port": RPC_PORT, "targetPort": "rpc", "protocol": "TCP"}],
        },
    }
