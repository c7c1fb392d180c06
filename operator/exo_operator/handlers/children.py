"""Child handlers: any change of a model's pod, Job, Deployment, StatefulSet, claim or Service
refreshes it."""

import logging
from typing import Any

import kopf

from exo_operator.handlers.indexes import CHILD_FILTER
from exo_operator.naming import MODEL_LABEL

log = logging.getLogger(__name__)


@kopf.on.event("v1", "pods", labels=CHILD_FILTER)
@kopf.on.event("batch", "v1", "jobs", labels=CHILD_FILTER)
@kopf.on.event("apps", "v1", "deployments", labels=CHILD_FILTER)
@kopf.on.event("apps", "v1", "statefulsets", labels=CHILD_FILTER)
@kopf.on.event("v1", "persistentvolumeclaims", labels=CHILD_FILTER)
@kopf.on.event("v1", "services", labels=CHILD_FILTER)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_FILTER)
async def child_changed(
    resource: kopf.Resource, namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    """Re-derives the owning model's status (and re-applies a child that drifted or vanished)."""
    memo.ready.set()
    memo.reconciler.metrics.child_event(resource.plural)
    try:
        await memo.reconciler.reconcile((namespace, labels[MODEL_LABEL]))
    except kopf.TemporaryError as error:
        # Event handlers are not retried; the periodic resync picks the model up again.
        log.warning(
            "reconcile of %s/%s deferred to the next resync: %s",
            namespace,
            labels[MODEL_LABEL],
            error,
        )
