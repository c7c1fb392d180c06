"""Pure builders: (ExoModel, settings) → the manifest of one child. Nothing here calls the API."""

import hashlib
import json
from typing import Any

from exo_operator.model import GROUP, KIND, VERSION, ExoModel
from exo_operator.naming import APPLIED_HASH_ANNOTATION


def owner_reference(model: ExoModel) -> dict[str, Any]:
    """Makes the ExoModel the child's controller, so garbage collection removes the child."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": model.name,
        "uid": model.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def content_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able value."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def stamp_applied_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    """Records the manifest's own hash on it, so that an unchanged child is never applied again."""
    manifest.setdefault("metadata", {}).setdefault("annotations", {})
    manifest["metadata"]["annotations"].pop(APPLIED_HASH_ANNOTATION, None)
    manifest["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = content_hash(manifest)
    return manifest


def applied_hash(observed: dict[str, Any] | None) -> str | None:
    if not observed:
        return None
    annotations = (observed.get("metadata") or {}).get("annotations") or {}
    return annotations.get(APPLIED_HASH_ANNOTATION)
