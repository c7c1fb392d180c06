"""The Job that downloads the model into the cache with `exo-runtime fetch`."""

from typing import Any

from exo_operator.cache import MODELS_MOUNT, fetch_source_args
from exo_operator.children import owner_reference
from exo_operator.children.placement import NO_GPU_ENV, placement_for
from exo_operator.children.pod_security import (
    SCRATCH_MOUNT,
    SCRATCH_VOLUME,
    container_security_context,
    pod_security_context,
)
from exo_operator.model import ExoModel
from exo_operator.naming import FETCH, cache_claim_name, component_labels, fetch_job_name
from exo_operator.settings import OperatorSettings
from exo_operator.source_plan import source_plan


def fetch_args(model: ExoModel) -> list[str]:
    """The `exo-runtime fetch` command line for the model's source."""
    # The cache PVC is the model's own: once this model is verified, what an older source left
    # beside it is dead weight that could fill the disk for the next download.
    dest = f"{MODELS_MOUNT}/{source_plan(model).cache_key}"
    return ["fetch", *fetch_source_args(model.spec.source), "--dest", dest, "--prune"]


def active_deadline_seconds(model: ExoModel, settings: OperatorSettings) -> int:
    """spec.fetch.activeDeadlineSeconds, else the operator's default."""
    deadline = model.spec.fetch.active_deadline_seconds
    return deadline if deadline is not None else settings.fetch_active_deadline_seconds


def _resources(settings: OperatorSettings) -> dict[str, Any]:
    return {
        "requests": {"cpu": settings.fetch_cpu_request, "memory": settings.fetch_memory_request},
        "limits": {"cpu": settings.fetch_cpu_limit, "memory": settings.fetch_memory_limit},
    }


def fetch_job_for(model: ExoModel, settings: OperatorSettings) -> dict[str, Any] | None:
    """The fetch Job, or None when the model is served from an existing claim."""
    spec = model.spec
    if not source_plan(model).fetched:
        return None
    labels = component_labels(model, FETCH)
    container: dict[str, Any] = {
        "name": "fetch",
        "image": spec.image or settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["exo-runtime"],
        "args": fetch_args(model),
        # The fetch asks for no GPU and, on a GPU node, must see none.
        "env": [{"name": "HOME", "value": "/tmp"}, NO_GPU_ENV],
        "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT}, SCRATCH_MOUNT],
        "resources": _resources(settings),
        "securityContext": container_security_context(),
        # The final {"event": "done"|"failed"} line arrives in the pod's status this way.
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }
    hf = spec.source.hugging_face
    if hf and hf.token_secret_ref:
        container["env"].append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": hf.token_secret_ref.name,
                        "key": hf.token_secret_ref.key,
                    }
                },
            }
        )
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(settings.runtime_uid),
        "containers": [container],
        "volumes": [
            {"name": "models", "persistentVolumeClaim": {"claimName": cache_claim_name(model)}},
            SCRATCH_VOLUME,
        ],
        **placement_for(model),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": fetch_job_name(model),
            "namespace": model.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(model)],
        },
        "spec": {
            "backoffLimit": settings.fetch_backoff_limit,
            # Counts every try together: a download that stalls fails with DeadlineExceeded.
            "activeDeadlineSeconds": active_deadline_seconds(model, settings),
            "ttlSecondsAfterFinished": settings.fetch_ttl_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
