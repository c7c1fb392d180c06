"""The plan: which children exist in each state, and which writes are skipped."""

from _models import model
from exo_operator.plan import desired_children, needs_apply
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
