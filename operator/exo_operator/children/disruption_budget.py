"""The PodDisruptionBudget that keeps a multi-replica model serving through node drains."""

from typing import Any

from exo_operator.children import owner_reference
from exo_operator.model import ExoModel
from exo_operator.naming import RUNTIME, component_labels, runtime_name, runtime_selector


def runtime_pdb_for(model: ExoModel) -> dict[str, Any] | None:
    """One voluntary eviction at a time, or None with one replica or none.

    A budget over a single pod would block every node drain (or, with maxUnavailable 1, guard
    nothing), so it exists only while there is a replica to spare.
    """
    if model.spec.replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": runtime_name(model),
            "namespace": model.namespace,
            "labels": component_labels(model, RUNTIME),
            "ownerReferences": [owner_reference(model)],
        },
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": runtime_selector(model)},
            # A pod that is not ready (still loading, crash-looping) serves nobody: evicting it
            # costs nothing, and guarding it would stall a drain behind a broken model.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
