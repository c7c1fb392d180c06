"""The model cache PVC."""

from typing import Any

from exo_operator.children import owner_reference
from exo_operator.model import ExoModel
from exo_operator.naming import CACHE, cache_claim_name, component_labels
from exo_operator.source_plan import source_plan


def cache_pvc_for(model: ExoModel) -> dict[str, Any] | None:
    """The cache claim, or None when the model is served from an existing claim.

    With storage.retainOnDelete the claim carries no owner reference, so garbage collection
    leaves it (and the downloaded model) behind; no finalizer is needed for that.
    """
    spec = model.spec
    if not source_plan(model).fetched:
        return None
    metadata: dict[str, Any] = {
        "name": cache_claim_name(model),
        "namespace": model.namespace,
        "labels": component_labels(model, CACHE),
    }
    if not spec.storage.retain_on_delete:
        metadata["ownerReferences"] = [owner_reference(model)]
    pvc_spec: dict[str, Any] = {
        "accessModes": [spec.storage.access_mode],
        "resources": {"requests": {"storage": spec.storage.size}},
    }
    if spec.storage.storage_class_name is not None:
        pvc_spec["storageClassName"] = spec.storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata,
        "spec": pvc_spec,
    }
