"""The Deployment of runtime pods running `exo-runtime serve`."""

import math
from typing import Any

from kubernetes.utils import parse_quantity

from exo_operator.cache import MODELS_MOUNT
from exo_operator.children import content_hash, owner_reference
from exo_operator.children.placement import GPU_RESOURCE, NO_GPU_ENV, placement_for
from exo_operator.children.pod_security import (
    SCRATCH_MOUNT,
    SCRATCH_VOLUME,
    container_security_context,
    pod_security_context,
)
from exo_operator.children.workers import group_count, worker_addresses, workers_hash
from exo_operator.model import ExoModel
from exo_operator.naming import (
    CACHE_CLAIM_ANNOTATION,
    RUNTIME,
    TEMPLATE_HASH_LABEL,
    WORKERS_HASH_ANNOTATION,
    component_labels,
    group_labels,
    head_name,
    head_selector,
)
from exo_operator.settings import OperatorSettings
from exo_operator.source_plan import source_plan

PROBE_PERIOD_SECONDS = 5
GIB = 1024**3
# After the drain's bound the runtime still cancels what is left (2 s) and shuts the engine
# down; the kubelet's SIGKILL must not cut that short.
EXIT_MARGIN_SECONDS = 15
# Workers come up beside the head (scheduling, an image pull on a warm node): minutes at most.
# A worker still missing after that is reported; the head, restarted, waits for it again.
RPC_CONNECT_SECONDS = 300


def threads_for(model: ExoModel) -> int | None:
    """engineArgs.threads, else one thread per whole CPU of the limit (more would just contend)."""
    if model.spec.engine_args.threads:
        return model.spec.engine_args.threads
    if model.spec.resources.cpu is None:
        return None
    return max(1, math.floor(parse_quantity(model.spec.resources.cpu)))


def startup_budget_seconds(
    model: ExoModel, settings: OperatorSettings, model_bytes: int | None
) -> int:
    """How long load and warmup may take: the warmup timeout plus time per GiB of model.

    The model's size comes from the download when known, else the cache size bounds it.
    """
    if model_bytes is None and source_plan(model).fetched:
        model_bytes = int(parse_quantity(model.spec.storage.size))
    gib = math.ceil((model_bytes or 0) / GIB)
    return model.spec.warmup.timeout_seconds + settings.startup_seconds_per_gib * gib


def gpu_layers_for(model: ExoModel) -> int:
    """engineArgs.gpuLayers, else every layer (-1) with GPUs and none (0) without.

    Never left to the runtime's default, which is "all" in a GPU build: a CPU pod of the CUDA
    image must not try to offload. Split across workers, every layer too: llama.cpp places
    layers only on the devices it offloads to, and the workers' RPC devices are such devices
    even without a GPU.
    """
    if model.spec.engine_args.gpu_layers is not None:
        return model.spec.engine_args.gpu_layers
    return -1 if model.spec.resources.gpus or model.spec.distributed else 0


def rpc_connect_timeout(startup_budget: int) -> int:
    """How long the head waits for its workers: at most RPC_CONNECT_SECONDS and half the
    startup probe's budget, so that a worker that never answers ends the head with a message
    naming it (WorkerUnreachable) before the probe restarts it without one."""
    return max(1, min(RPC_CONNECT_SECONDS, startup_budget // 2))


def _device_split(model: ExoModel) -> list[float] | None:
    """--tensor-split in llama.cpp's device order.

    The spec lists the head's share first, then the workers'; llama.cpp lists the RPC workers
    first, then the head's GPUs. A head without GPUs has no device in that list: its CPU keeps
    only what is never offloaded (the token embeddings), so its share is dropped.
    """
    spec = model.spec
    if not spec.distributed:
        return spec.engine_args.tensor_split
    split = spec.distributed.tensor_split
    if not split:
        return None
    head, *workers = split
    return [*workers, head] if spec.resources.gpus else workers


def serve_args(
    model: ExoModel, settings: OperatorSettings, model_bytes: int | None = None, group: int = 0
) -> list[str]:
    """The `exo-runtime serve` command line for the model's spec (a split model: for the head
    of `group`, which loads onto that group's workers)."""
    spec = model.spec
    source = source_plan(model)
    args = [
        "serve",
        "--model", source.model_path,
        "--engine", spec.engine,
        # The runtime listens on loopback by default; in a pod the kubelet's probes and the
        # Service reach it on the pod's IP.
        "--host", "0.0.0.0",
        "--port", str(settings.runtime_port),
        "--model-name", model.name,
        "--gpu-layers", str(gpu_layers_for(model)),
        "--shutdown-timeout", str(settings.runtime_drain_seconds),
    ]  # fmt: skip
    if source.fetched:
        # Only a model whose fetch verified it (every file of it) is loaded; a half-written or
        # tampered cache sends the model back to Downloading instead of serving garbage.
        args.append("--require-verified")
    ea = spec.engine_args
    split = _device_split(model)
    optional = {
        "--context-length": ea.context_length,
        "--rpc-workers": ",".join(worker_addresses(model, group)) if spec.distributed else None,
        "--rpc-connect-timeout": (
            rpc_connect_timeout(startup_budget_seconds(model, settings, model_bytes))
            if spec.distributed
            else None
        ),
        "--tensor-split": ",".join(f"{w:g}" for w in split) if split else None,
        "--threads": threads_for(model),
        "--batch-size": ea.batch_size,
        "--parallel": ea.parallel,
        "--chat-template": spec.chat_template,
        "--warmup-prompt": spec.warmup.prompt,
        "--warmup-max-tokens": spec.warmup.max_tokens,
    }
    for flag, value in optional.items():
        if value is not None:
            args += [flag, str(value)]
    return args


def _resources(model: ExoModel) -> dict[str, Any]:
    res = model.spec.resources
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}
    if res.gpus:
        limits[GPU_RESOURCE] = str(res.gpus)
    for name, value in (("cpu", res.cpu), ("memory", res.memory)):
        if value is not None:
            requests[name] = limits[name] = str(value)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _env(model: ExoModel) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}]
    if not model.spec.resources.gpus:
        env.append(NO_GPU_ENV)
    ref = model.spec.api_key_secret_ref
    if ref:
        # From the Secret, never in the manifest: the key stays out of the Deployment and
        # `kubectl describe`.
        secret = {"name": ref.name, "key": ref.key}
        env.append({"name": "EXO_API_KEY", "valueFrom": {"secretKeyRef": secret}})
    return env


def _probes(budget_seconds: int) -> dict[str, Any]:
    def http_get(path: str) -> dict[str, Any]:
        return {"path": path, "port": "http"}

    return {
        # The startup probe holds liveness off until /readyz passes, so a long load is never
        # killed by its own probe; past the budget a truly hung load restarts with a reason.
        "startupProbe": {
            "httpGet": http_get("/readyz"),
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "failureThreshold": max(1, math.ceil(budget_seconds / PROBE_PERIOD_SECONDS)),
            "timeoutSeconds": 2,
        },
        "readinessProbe": {
            "httpGet": http_get("/readyz"),
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "failureThreshold": 2,
            "timeoutSeconds": 2,
        },
        "livenessProbe": {
            "httpGet": http_get("/healthz"),
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
        },
    }


def _model_volume(model: ExoModel) -> dict[str, Any]:
    claim = source_plan(model).claim_name
    return {"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}


def cache_allows_surge(model: ExoModel) -> bool:
    """Whether a second pod can mount the model wherever it is scheduled.

    A ReadWriteMany cache can; an existing claim is taken to be shared (it is the user's, made
    to be served from). A ReadWriteOnce disk attaches to one node and a ReadWriteOncePod one
    to one pod: a surge pod elsewhere would wait for it forever while the old pod held it.
    """
    return not source_plan(model).fetched or model.spec.storage.access_mode == "ReadWriteMany"


def _strategy(model: ExoModel) -> dict[str, Any]:
    if cache_allows_surge(model):
        # Never below the ready replicas: a new pod loads and warms up before an old one stops.
        # With GPUs that needs one pod's worth free; until then the old pods keep serving.
        rolling = {"maxSurge": 1, "maxUnavailable": 0}
    else:
        rolling = {"maxSurge": 0, "maxUnavailable": 1}
    return {"type": "RollingUpdate", "rollingUpdate": rolling}


def termination_grace_seconds(settings: OperatorSettings) -> int:
    """preStop's pause, the drain's bound and time to exit: SIGKILL never cuts a drain short."""
    return settings.runtime_prestop_seconds + settings.runtime_drain_seconds + EXIT_MARGIN_SECONDS


def _lifecycle(settings: OperatorSettings) -> dict[str, Any]:
    # Endpoints drop a terminating pod asynchronously: it keeps taking requests for a moment,
    # so it keeps serving them before SIGTERM starts the drain. The runtime image has no shell,
    # hence the kubelet's own sleep action (GA in Kubernetes 1.34, beta and on since 1.30).
    if not settings.runtime_prestop_seconds:
        return {}
    return {"lifecycle": {"preStop": {"sleep": {"seconds": settings.runtime_prestop_seconds}}}}


def _pod_template(
    model: ExoModel,
    settings: OperatorSettings,
    model_bytes: int | None,
    cache_claim_uid: str | None,
    group: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The runtime pods' template: its metadata and its pod spec."""
    spec = model.spec
    container: dict[str, Any] = {
        "name": "runtime",
        "image": spec.image or settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["exo-runtime"],
        "args": serve_args(model, settings, model_bytes, group),
        "env": _env(model),
        "ports": [{"name": "http", "containerPort": settings.runtime_port, "protocol": "TCP"}],
        "resources": _resources(model),
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True},
            SCRATCH_MOUNT,
        ],
        "securityContext": container_security_context(),
        # "exo-runtime: load failed: ..." arrives here; the log's tail when the runtime died
        # before it could write it.
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **_probes(startup_budget_seconds(model, settings, model_bytes)),
        **_lifecycle(settings),
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(settings.runtime_uid),
        "terminationGracePeriodSeconds": termination_grace_seconds(settings),
        "containers": [container],
        "volumes": [_model_volume(model), SCRATCH_VOLUME],
        **placement_for(model),
    }
    template_metadata: dict[str, Any] = {
        "labels": component_labels(model, RUNTIME) | group_labels(group),
        # The usual scrape annotations, so a Prometheus that discovers pods finds /metrics;
        # the spec's podAnnotations win.
        "annotations": {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(settings.runtime_port),
            "prometheus.io/path": "/metrics",
        }
        | dict(spec.pod_annotations or {}),
    }
    if spec.distributed:
        template_metadata["annotations"][WORKERS_HASH_ANNOTATION] = workers_hash(model, settings)
    if cache_claim_uid:
        # A claim made again (deleted by hand, then fetched anew) rolls the pods: the old ones,
        # which found no verified model on it, would otherwise wait out a crash-loop back-off.
        template_metadata["annotations"][CACHE_CLAIM_ANNOTATION] = cache_claim_uid
    return template_metadata, pod_spec


def runtime_deployment_for(
    model: ExoModel,
    settings: OperatorSettings,
    model_bytes: int | None = None,
    cache_claim_uid: str | None = None,
    group: int = 0,
) -> dict[str, Any]:
    """The runtime Deployment (a split model: the head of `group`); a change to anything the
    pods run with rolls it, the cache claim they mount (`cache_claim_uid`) included."""
    spec = model.spec
    template_metadata, pod_spec = _pod_template(
        model, settings, model_bytes, cache_claim_uid, group
    )
    # Pods carry the hash of the template they were made from: the status counts as ready only
    # those of the current spec, without waiting for the Deployment controller's bookkeeping.
    # Every group's head carries group 0's: theirs differ only by the group, not by the spec.
    made_from = (
        (template_metadata, pod_spec)
        if group == 0
        else _pod_template(model, settings, model_bytes, cache_claim_uid, 0)
    )
    template_metadata["labels"][TEMPLATE_HASH_LABEL] = content_hash(list(made_from))
    # A split model's replicas are its groups, each with a head Deployment of one pod.
    replicas = int(group < spec.replicas) if spec.distributed else spec.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": head_name(model, group),
            "namespace": model.namespace,
            "labels": component_labels(model, RUNTIME) | group_labels(group),
            "ownerReferences": [owner_reference(model)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": head_selector(model, group)},
            "strategy": _strategy(model),
            "template": {"metadata": template_metadata, "spec": pod_spec},
        },
    }


def runtime_deployments_for(
    model: ExoModel,
    settings: OperatorSettings,
    model_bytes: int | None = None,
    cache_claim_uid: str | None = None,
) -> list[dict[str, Any]]:
    """The model's Deployment, or a split model's head Deployment of every group (group 0's
    first)."""
    return [
        runtime_deployment_for(model, settings, model_bytes, cache_claim_uid, group)
        for group in range(group_count(model))
    ]
