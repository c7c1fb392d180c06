"""The Job that downloads the model into the cache with `exo-runtime fetch`."""

from typing import Any

from exo_operator.cache import MODELS_MOUNT, cache_key, model_filename, source_uri
from exo_operator.children import owner_reference
from exo_operator.children.pod_security import (
    SCRATCH_MOUNT,
    SCRATCH_VOLUME,
    container_security_context,
    pod_security_context,
)
from exo_operator.model import ExoModel
from exo_operator.naming import FETCH, cache_claim_name, component_labels, fetch_job_name
from exo_operator.settings import OperatorSettings


def fetch_args(model: ExoModel) -> list[str]:
    """The `exo-runtime fetch` command line for the model's source."""
    source = model.spec.source
    args = ["fetch", source_uri(source), "--dest", f"{MODELS_MOUNT}/{cache_key(source)}"]
    if source.sha256:
        args += ["--sha256", source.sha256.lower()]
    args += ["--filename", model_filename(source)]
    return args


def fetch_job_for(model: ExoModel, settings: OperatorSettings) -> dict[str, Any] | None:
    """The fetch Job, or None when the model is served from an existing claim."""
    spec = model.spec
    if spec.source.pvc:
        return None
    labels = component_labels(model, FETCH)
    container: dict[str, Any] = {
        "name": "fetch",
        "image": spec.image or settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["exo-runtime"],
        "args": fetch_args(model),
        "env": [{"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT}, SCRATCH_MOUNT],
        # Hashing and writing a multi-GB file needs little CPU or memory; ask for a little.
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
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
    }
    # The cache volume may only be reachable from the nodes the runtime will run on.
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = list(spec.tolerations)
    if spec.affinity:
        pod_spec["affinity"] = spec.affinity
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": fetch_job_name(model, cache_key(spec.source)),
            "namespace": model.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(model)],
        },
        "spec": {
            "backoffLimit": settings.fetch_backoff_limit,
            "ttlSecondsAfterFinished": settings.fetch_ttl_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
