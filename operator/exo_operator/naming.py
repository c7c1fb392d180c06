"""Names and labels of an ExoModel's children, all derived from the ExoModel's name."""

import hashlib
import json

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


def workers_name(model: ExoModel) -> str:
    """The worker StatefulSet's and its headless Service's name (the pods' DNS subdomain)."""
    return f"{model.name}-workers"


def worker_pod_name(model: ExoModel, ordinal: int) -> str:
    return f"{workers_name(model)}-{ordinal}"


# exo-runtime rpc-worker's default port, and the port of its GET /healthz (the next one).
RPC_PORT = 50052
RPC_HEALTH_PORT = RPC_PORT + 1


def worker_address(model: ExoModel, ordinal: int, port: int) -> str:
    """A worker's stable host:port, through the headless Service (it survives a restart)."""
    service = workers_name(model)
    return f"{worker_pod_name(model, ordinal)}.{service}.{model.namespace}.svc:{port}"


def worker_selector(model: ExoModel) -> dict[str, str]:
    return {MODEL_LABEL: model.name, COMPONENT_LABEL: WORKER}


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
    return {MODEL_LABEL: model.name, COMPONENT_LABEL: RUNTIME}


def selector_string(model: ExoModel) -> str:
    """The runtime pods' selector as the scale subresource wants it (label=value,...)."""
    return ",".join(f"{k}={v}" for k, v in sorted(runtime_selector(model).items()))


def endpoint(model: ExoModel, port: int) -> str:
    return f"http://{runtime_name(model)}.{model.namespace}.svc:{port}/v1"
