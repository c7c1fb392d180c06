"""Names and labels of an ExoModel's children, all derived from the ExoModel's name."""

import hashlib
import json
from typing import Any

from exo_operator.cache import cache_key
from exo_operator.model import ExoModel

MODEL_LABEL = "exo.dev/model"
COMPONENT_LABEL = "exo.dev/component"
TEMPLATE_HASH_LABEL = "exo.dev/template-hash"
APPLIED_HASH_ANNOTATION = "exo.dev/applied-hash"
# On runtime pods: the uid of the cache claim they were made for.
CACHE_CLAIM_ANNOTATION = "exo.dev/cache-claim"
# On runtime pods of a model split across workers: the hash of the worker group they load onto.
WORKERS_HASH_ANNOTATION = "exo.dev/workers-hash"
# On the children and pods of a split model's group 1 and above: the group's index. Group 0
# carries none, so that its names, selectors (immutable) and templates stay those of a model
# of one group, and adding groups never rolls it.
GROUP_LABEL = "exo.dev/group"

RUNTIME = "runtime"
WORKER = "worker"
FETCH = "fetch"
CACHE = "cache"


def cache_claim_name(model: ExoModel) -> str:
    return f"{model.name}-cache"


def fetch_job_name(model: ExoModel, key: str | None = None) -> str:
    """One Job per try: a change that could make a failed fetch succeed gets a new Job.

    That is the source and its checksum (`key`, the cache key, computed when not given), the
    cache's size (a full disk), the token's Secret (a gated repository) and the deadline. A
    Job's template is immutable and a failed Job stays failed, so only a new name retries;
    anything else (an operator restart, the replicas, the engine) keeps the name.
    """
    spec = model.spec
    token = spec.source.hugging_face.token_secret_ref if spec.source.hugging_face else None
    inputs = {
        "key": key or cache_key(spec.source),
        "size": spec.storage.size,
        "token": token.model_dump() if token else None,
        "deadline": spec.fetch.active_deadline_seconds,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return f"{model.name}-fetch-{digest[:10]}"


def runtime_name(model: ExoModel) -> str:
    """The Deployment's and the Service's name, so that the endpoint reads like the model."""
    return model.name


def _group_suffix(group: int) -> str:
    return f"-g{group}" if group else ""


def head_name(model: ExoModel, group: int = 0) -> str:
    """The head Deployment of a group: group 0's is the model's own (`runtime_name`)."""
    return f"{runtime_name(model)}{_group_suffix(group)}"


def workers_name(model: ExoModel) -> str:
    """The headless Service of every group's workers (their pods' DNS subdomain), and group
    0's worker StatefulSet."""
    return f"{model.name}-workers"


def group_workers_name(model: ExoModel, group: int = 0) -> str:
    """A group's worker StatefulSet: NAME-workers, NAME-g1-workers, ..."""
    return f"{model.name}{_group_suffix(group)}-workers"


def worker_pod_name(model: ExoModel, ordinal: int, group: int = 0) -> str:
    return f"{group_workers_name(model, group)}-{ordinal}"


# exo-runtime rpc-worker's default port, and the port of its GET /healthz (the next one).
RPC_PORT = 50052
RPC_HEALTH_PORT = RPC_PORT + 1


def worker_address(model: ExoModel, ordinal: int, port: int, group: int = 0) -> str:
    """A worker's stable host:port, through the headless Service (it survives a restart)."""
    service = workers_name(model)
    return f"{worker_pod_name(model, ordinal, group)}.{service}.{model.namespace}.svc:{port}"


def group_labels(group: int) -> dict[str, str]:
    return {GROUP_LABEL: str(group)} if group else {}


def group_of(obj: dict[str, Any]) -> int:
    """The group a split model's pod or child belongs to (no label: group 0)."""
    value = ((obj.get("metadata") or {}).get("labels") or {}).get(GROUP_LABEL, "0")
    return int(value) if value.isdigit() else 0


def worker_selector(model: ExoModel, group: int = 0) -> dict[str, str]:
    """A group's workers. Group 0's names no group, so it matches every worker of the model
    (the headless Service's and the spread's selector); its StatefulSet still claims only the
    pods its controller reference names, the other groups' being their own StatefulSets'."""
    return {MODEL_LABEL: model.name, COMPONENT_LABEL: WORKER} | group_labels(group)


def component_labels(model: ExoModel, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "exo-runtime",
        "app.kubernetes.io/instance": model.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "exo-operator",
        MODEL_LABEL: model.name,
        COMPONENT_LABEL: component,
    }


def runtime_selector(model: ExoModel) -> dict[str, str]:
    """Every runtime pod (every group's head): the Service, the budget and the scale."""
    return {MODEL_LABEL: model.name, COMPONENT_LABEL: RUNTIME}


def head_selector(model: ExoModel, group: int = 0) -> dict[str, str]:
    """One group's head Deployment; group 0's is the one a model of one group has, so it
    matches every head, but its Deployment adopts no ReplicaSet that another one owns."""
    return runtime_selector(model) | group_labels(group)


def selector_string(model: ExoModel) -> str:
    """The runtime pods' selector as the scale subresource wants it (label=value,...)."""
    return ",".join(f"{k}={v}" for k, v in sorted(runtime_selector(model).items()))


def endpoint(model: ExoModel, port: int) -> str:
    return f"http://{runtime_name(model)}.{model.namespace}.svc:{port}/v1"
