"""In-memory views of ExoModels and their children, keyed by (namespace, model name).

Handlers look children up here instead of listing them from the apiserver. The index functions
are async although they never wait: kopf runs a plain function in a thread, a hand-off that
every watch event of every child would pay.
"""

import sys
from typing import Any

import kopf

from exo_operator.model import GROUP, PLURAL, VERSION
from exo_operator.naming import MODEL_LABEL

CHILD_FILTER = {MODEL_LABEL: kopf.PRESENT, "app.kubernetes.io/managed-by": "exo-operator"}
# The same filter in the apiserver's words: kopf filters by `labels=` after the object has
# crossed the wire and been parsed, so only this keeps other workloads off the operator.
CHILD_SELECTOR = f"{MODEL_LABEL},app.kubernetes.io/managed-by=exo-operator"
# Every child resource the handlers below and in children.py watch, as kopf selectors.
CHILD_RESOURCES: tuple[tuple[str, ...], ...] = (
    ("v1", "pods"),
    ("batch", "v1", "jobs"),
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("v1", "persistentvolumeclaims"),
    ("v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
)


def select_children_server_side(settings: kopf.OperatorSettings) -> None:
    """Has the apiserver send only the operator's children on every child list and watch."""
    for resource in CHILD_RESOURCES:
        settings.watching.label_selectors[resource] = CHILD_SELECTOR


def _key(namespace: str | None, labels: Any) -> tuple[str | None, str]:
    return (namespace, labels[MODEL_LABEL])


# Strings up to this long are shared between the objects the indexes hold (sys.intern).
SHARED_STRING_CHARS = 64


def _compact(value: Any) -> Any:
    """A copy of a parsed object whose keys and short strings are shared between objects.

    The JSON parser makes a new string for every key and value of every event, so each of
    the thousands of children held here carried its own "metadata", "labels",
    "app.kubernetes.io/managed-by", "True", "Ready"...: about 60 % of what the indexes
    held, measured on a model's children. The copy also lets go of the event's own object.
    """
    if isinstance(value, dict):
        return {sys.intern(k): _compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    if isinstance(value, str) and len(value) <= SHARED_STRING_CHARS:
        return sys.intern(value)
    return value


def _slim(body: kopf.Body) -> dict[str, Any]:
    """The object without its managedFields, which the operator never reads and which are large."""
    slim = dict(body)
    slim["metadata"] = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    return _compact(slim)


def slim_child(body: Any) -> dict[str, Any]:
    """A child as the operator reads it: metadata (less managedFields), status, a pod's node.

    The rest of the spec goes: a Job's, Deployment's or StatefulSet's holds a whole pod template
    and a pod's its containers, most of what the indexes would keep of thousands of children.
    """
    slim = {k: v for k, v in body.items() if k != "spec"}
    slim["metadata"] = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    node = (body.get("spec") or {}).get("nodeName")
    slim["spec"] = {"nodeName": node} if node else {}
    return _compact(slim)


@kopf.index(GROUP, VERSION, PLURAL)
async def exomodels(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, name): _slim(body)}


@kopf.index("v1", "pods", labels=CHILD_FILTER)
async def model_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return {_key(namespace, labels): slim_child(body)}


@kopf.index("batch", "v1", "jobs", labels=CHILD_FILTER)
async def model_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return {_key(namespace, labels): slim_child(body)}


@kopf.index("apps", "v1", "deployments", labels=CHILD_FILTER)
async def model_deployments(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return {_key(namespace, labels): slim_child(body)}


@kopf.index("v1", "persistentvolumeclaims", labels=CHILD_FILTER)
async def model_claims(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return {_key(namespace, labels): slim_child(body)}


@kopf.index("v1", "services", labels=CHILD_FILTER)
async def model_services(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return {_key(namespace, labels): slim_child(body)}


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=CHILD_FILTER)
async def model_budgets(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return {_key(namespace, labels): slim_child(body)}


@kopf.index("apps", "v1", "statefulsets", labels=CHILD_FILTER)
async def model_statefulsets(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict:
    return {_key(namespace, labels): slim_child(body)}
