"""The ClusterIP Service in front of the runtime pods."""

from typing import Any

from exo_operator.children import owner_reference
from exo_operator.model import ExoModel
from exo_operator.naming import RUNTIME, component_labels, runtime_name, runtime_selector
from exo_operator.settings import OperatorSettings


def runtime_service_for(model: ExoModel, settings: OperatorSettings) -> dict[str, Any]:
    """A ClusterIP Service on the OpenAI port, named like the model."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": runtime_name(model),
            "namespace": model.namespace,
            "labels": component_labels(model, RUNTIME),
            "ownerReferences": [owner_reference(model)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": runtime_selector(model),
            "ports": [
                {
                    "name": "http",
                    "port": settings.runtime_port,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }
