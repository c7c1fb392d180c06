"""Plan apart from action: which children an ExoModel should have, and which need applying now."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from exo_operator.children import applied_hash, stamp_applied_hash
from exo_operator.children.deployment import runtime_deployments_for
from exo_operator.children.disruption_budget import runtime_pdb_for
from exo_operator.children.fetch_job import fetch_job_for
from exo_operator.children.pvc import cache_pvc_for
from exo_operator.children.service import runtime_service_for
from exo_operator.children.workers import workers_service_for, workers_statefulsets_for
from exo_operator.model import ExoModel
from exo_operator.naming import GROUP_LABEL, TEMPLATE_HASH_LABEL, fetch_job_name
from exo_operator.settings import OperatorSettings
from exo_operator.source_plan import source_plan

ChildKey = tuple[str, str, str]  # (kind, namespace, name)


def child_key(manifest: dict[str, Any]) -> ChildKey:
    meta = manifest["metadata"]
    return manifest["kind"], meta["namespace"], meta["name"]


@dataclass(frozen=True)
class Desired:
    """Every child the ExoModel should have in its current state, stamped with its hash."""

    manifests: list[dict[str, Any]]
    template_hash: str


def desired_children(
    model: ExoModel,
    settings: OperatorSettings,
    cached: bool,
    model_bytes: int | None,
    cache_claim_uid: str | None = None,
    cache_claim_going: bool = False,
) -> Desired:
    """The cache claim and the fetch Job until the model is cached; then the Deployment.

    The Service comes first of all, so that the endpoint exists before the pods do; the
    disruption budget (more than one replica) before the pods too. A model split across
    workers has their headless Service and a StatefulSet per group too, the latter without pods
    until the model is cached, and applied before the heads so that their workers start first.
    """
    deployments = runtime_deployments_for(model, settings, model_bytes, cache_claim_uid)
    if cache_claim_going:
        # A claim being deleted waits for every pod that mounts it, the Deployment's new ones
        # too: none may run until it is gone and made again (then fetched, then scaled back).
        for deployment in deployments:
            deployment["spec"]["replicas"] = 0
    manifests = [runtime_service_for(model, settings)]
    workers_service = workers_service_for(model)
    if workers_service:
        manifests.append(workers_service)
    pdb = runtime_pdb_for(model)
    if pdb:
        manifests.append(pdb)
    pvc = cache_pvc_for(model)
    if pvc:
        manifests.append(pvc)
    manifests += workers_statefulsets_for(model, settings, running=cached and not cache_claim_going)
    if cached or cache_claim_going:
        manifests += deployments
    else:
        job = fetch_job_for(model, settings)
        if job:
            manifests.append(job)
    template = deployments[0]["spec"]["template"]
    template_hash = template["metadata"]["labels"][TEMPLATE_HASH_LABEL]
    return Desired([stamp_applied_hash(m) for m in manifests], template_hash)


# Kinds whose absence from the plan means "delete it": a Service, claim or the model's own
# Deployment is never dropped from a live model's plan (a Deployment waits, unapplied, while a
# fetch retries). The workers' StatefulSets are, when spec.distributed goes or their group
# does, and so is a group's head Deployment past group 0 (it carries the group's label);
# the workers' headless Service, which holds no pod, stays until the model goes (the operator
# may delete no Service).
PRUNED_KINDS = ("PodDisruptionBudget", "Job", "StatefulSet", "Deployment")


def obsolete_children(
    model: ExoModel, desired: Desired, observed: Iterable[dict[str, Any]]
) -> list[ChildKey]:
    """Children of this model that its plan no longer holds, to delete.

    A disruption budget once the replicas drop to one; the workers once the model is no longer
    split; a split model's groups past spec.replicas, head and workers; a fetch Job of an
    older try (a changed source, cache size or token) while it still runs, so that two fetches
    never write into one cache. A finished Job stays, as does the current try's once the model
    is cached: its log is the user's until its TTL. Only what the model controls is ever named;
    delete a Job with propagationPolicy Background, or its pods stay behind.
    """
    wanted = {child_key(m) for m in desired.manifests}
    current_job = fetch_job_name(model) if source_plan(model).fetched else None
    obsolete = []
    for obj in observed:
        key = child_key(obj)
        if key[0] not in PRUNED_KINDS or key in wanted or not _controlled_by(obj, model.uid):
            continue
        if key[0] == "Job" and (key[2] == current_job or _finished(obj)):
            continue
        if key[0] == "Deployment" and GROUP_LABEL not in _labels(obj):
            continue
        obsolete.append(key)
    return obsolete


def _finished(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj["metadata"].get("labels") or {}


def _controlled_by(obj: dict[str, Any], uid: str) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def needs_apply(
    desired: dict[str, Any],
    observed: dict[str, Any] | None,
    remembered: tuple[str, str | None] | None,
) -> bool:
    """Whether a child must be applied: it is missing or differs from what was last applied.

    `remembered` is (hash, resourceVersion seen) of this operator's own last apply: while the
    watch has not yet shown that write, the child is not applied a second time.
    """
    if desired["kind"] == "Job" and observed:
        return False  # a Job's template is immutable and it runs once; a new source gets a new Job
    want = desired["metadata"]["annotations"]["exo.dev/applied-hash"]
    if applied_hash(observed) == want:
        return False
    if remembered and remembered[0] == want:
        seen = (observed or {}).get("metadata", {}).get("resourceVersion")
        return seen != remembered[1]
    return True
