"""ExoModel bodies for the operator's unit tests."""

import copy
from typing import Any

from exo_operator.model import ExoModel

SHA = "a" * 64


def body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "exo.dev/v1alpha1",
        "kind": "ExoModel",
        "metadata": {"name": "gemma", "namespace": "ml", "uid": "uid-1", "generation": 3},
        "spec": {"source": {"url": "https://models.example/gemma-3-270m.Q4_K_M.gguf"}},
    }
    base["spec"].update(copy.deepcopy(spec))
    return base


def model(**spec: Any) -> ExoModel:
    return ExoModel.from_body(body(**spec))
