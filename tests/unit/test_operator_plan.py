"""The plan: which children exist in each state, and which writes are skipped."""

from _models import model
from exo_operator.plan import desired_children, needs_apply, obsolete_children
from exo_operator.settings import OperatorSettings

SETTINGS = OperatorSettings()


def kinds(desired):
    return [m["kind"] for m in desired.manifests]


def test_until_cached_a_claim_and_a_fetch_job_then_the_deployment():
    assert kinds(desired_children(model(), SETTINGS, cached=False, model_bytes=None)) == [
        "Service",
        "PersistentVolumeClaim",
        "Job",
    ]
    assert kinds(desired_children(model(), SETTINGS, cached=True, model_bytes=None)) == [
        "Service",
        "PersistentVolumeClaim",
        "Deployment",
    ]


def test_existing_claim_source_needs_only_service_and_deployment():
    m = model(source={"pvc": {"claimName": "c", "path": "m.gguf"}})
    assert kinds(desired_children(m, SETTINGS, cached=True, model_bytes=None)) == [
        "Service",
        "Deployment",
    ]


def test_applied_child_is_not_applied_again():
    (svc, *_) = desired_children(model(), SETTINGS, cached=True, model_bytes=None).manifests
    assert needs_apply(svc, None, None)
    assert not needs_apply(svc, svc, None)
    changed = desired_children(
        model(image="x:2"), SETTINGS, cached=True, model_bytes=None
    ).manifests
    dep_old = desired_children(model(), SETTINGS, cached=True, model_bytes=None).manifests[-1]
    assert needs_apply(changed[-1], dep_old, None)


def test_own_write_not_yet_seen_by_the_watch_is_not_repeated():
    (svc, *_) = desired_children(model(), SETTINGS, cached=True, model_bytes=None).manifests
    want = svc["metadata"]["annotations"]["exo.dev/applied-hash"]
    assert not needs_apply(svc, None, (want, None))
    # The watch moved on and the child lacks our hash: someone changed it, so apply again.
    drifted = {"metadata": {"resourceVersion": "9", "annotations": {}}}
    assert needs_apply(svc, drifted, (want, "5"))


def test_a_job_is_never_reapplied():
    job = desired_children(model(), SETTINGS, cached=False, model_bytes=None).manifests[-1]
    assert not needs_apply(job, {"metadata": {"annotations": {}}}, None)


RWX = {"accessMode": "ReadWriteMany"}


def test_more_than_one_replica_adds_a_disruption_budget_before_the_pods():
    m = model(replicas=2, storage=RWX)
    assert kinds(desired_children(m, SETTINGS, cached=True, model_bytes=None)) == [
        "Service",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "Deployment",
    ]


def owned(kind, name, uid="uid-1", controller=True):
    return {
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "ml",
            "ownerReferences": [{"uid": uid, "controller": controller}],
        },
    }


def test_scaling_down_to_one_replica_deletes_the_disruption_budget():
    m = model(replicas=1, storage=RWX)
    desired = desired_children(m, SETTINGS, cached=True, model_bytes=None)
    assert obsolete_children(m, desired, [owned("PodDisruptionBudget", "gemma")]) == [
        ("PodDisruptionBudget", "ml", "gemma")
    ]
    scaled = model(replicas=2, storage=RWX)
    desired = desired_children(scaled, SETTINGS, cached=True, model_bytes=None)
    assert obsolete_children(scaled, desired, [owned("PodDisruptionBudget", "gemma")]) == []


def finished(job, condition):
    return job | {"status": {"conditions": [{"type": condition, "status": "True"}]}}


def test_a_superseded_fetch_job_still_running_is_deleted():
    old = desired_children(model(), SETTINGS, cached=False, model_bytes=None).manifests[-1]
    old_name = old["metadata"]["name"]
    grown = model(storage={"size": "50Gi"})
    new = desired_children(grown, SETTINGS, cached=False, model_bytes=None)
    current = new.manifests[-1]["metadata"]["name"]
    observed = [owned("Job", old_name), owned("Job", current)]
    assert obsolete_children(grown, new, observed) == [("Job", "ml", old_name)]
    # Finished, it writes nothing more: its log stays readable until its TTL.
    for condition in ("Complete", "Failed"):
        observed = [finished(owned("Job", old_name), condition), owned("Job", current)]
        assert obsolete_children(grown, new, observed) == []


def test_the_current_fetch_job_is_kept_once_the_model_is_cached():
    cached = desired_children(model(), SETTINGS, cached=True, model_bytes=None)
    current = desired_children(model(), SETTINGS, cached=False, model_bytes=None).manifests[-1]
    assert obsolete_children(model(), cached, [owned("Job", current["metadata"]["name"])]) == []


def test_what_the_model_does_not_control_is_never_deleted():
    m = model()
    desired = desired_children(m, SETTINGS, cached=True, model_bytes=None)
    observed = [
        owned("PodDisruptionBudget", "gemma", uid="someone-else"),
        owned("Job", "gemma-fetch-0123456789", controller=False),
        # Kinds the plan never drops: a missing Deployment is a wait, not a delete.
        owned("Deployment", "gemma"),
        owned("Service", "other"),
    ]
    assert obsolete_children(m, desired, observed) == []


def test_a_cache_claim_made_again_rolls_the_runtime_pods() -> None:
    def template(claim_uid):
        desired = desired_children(model(), SETTINGS, cached=True, model_bytes=None,
                                   cache_claim_uid=claim_uid)  # fmt: skip
        return desired.manifests[-1]["spec"]["template"], desired.template_hash

    (first, first_hash), (again, again_hash) = template("uid-1"), template("uid-2")
    assert first["metadata"]["annotations"]["exo.dev/cache-claim"] == "uid-1"
    assert again["metadata"]["annotations"]["exo.dev/cache-claim"] == "uid-2"
    assert first_hash != again_hash


def test_a_cache_claim_being_deleted_scales_the_runtime_to_zero() -> None:
    desired = desired_children(model(), SETTINGS, cached=True, model_bytes=None,
                               cache_claim_uid="uid-1", cache_claim_going=True)  # fmt: skip
    assert desired.manifests[-1]["kind"] == "Deployment"
    assert desired.manifests[-1]["spec"]["replicas"] == 0
