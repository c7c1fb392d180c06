"""Where an ExoModel's pods may run: one placement shared by the runtime and fetch pods.

The fetch pod goes where the runtime will go, because the cache volume may only be reachable
from those nodes (a zonal disk, a local volume) and GPU node pools are often the only ones
with room for a large model.
"""

from typing import Any

from exo_operator.model import ExoModel

GPU_RESOURCE = "nvidia.com/gpu"
# The CUDA base image sets NVIDIA_VISIBLE_DEVICES=all: on a GPU node whose container runtime
# honours it, a pod that asked for no GPU would see (and could use) every GPU of the node.
NO_GPU_ENV = {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}


def tolerations_for(model: ExoModel) -> list[dict[str, Any]]:
    """spec.tolerations, plus the nvidia.com/gpu taint whenever the runtime asks for GPUs."""
    tolerations = list(model.spec.tolerations)
    if model.spec.resources.gpus:
        # GPU node pools are commonly tainted nvidia.com/gpu so that only GPU work lands there.
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def placement_for(model: ExoModel) -> dict[str, Any]:
    """The pod spec's nodeSelector, tolerations and affinity (only those that are set)."""
    spec = model.spec
    placement: dict[str, Any] = {}
    tolerations = tolerations_for(model)
    if tolerations:
        placement["tolerations"] = tolerations
    if spec.node_selector:
        placement["nodeSelector"] = dict(spec.node_selector)
    if spec.affinity:
        placement["affinity"] = spec.affinity
    return placement
