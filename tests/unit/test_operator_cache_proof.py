"""The cache is proven on the claim it sits on; a runtime that finds it unverified refutes it."""

import pytest
from _models import model
from exo_operator.cache import cache_key
from exo_operator.cache_proof import (
    VERIFIED_AT_ANNOTATION,
    VERIFIED_KEY_ANNOTATION,
    fetch_jobs_to_delete,
    stamp_wanted,
)
from exo_operator.status import Observed, aggregate, is_cached

KEY = cache_key(model().spec.source)
T = "2026-01-01T{}Z".format  # T("11:00:00")


def claim(created="10:00:00", stamp=None):
    annotations = {}
    if stamp:
        annotations = {VERIFIED_KEY_ANNOTATION: stamp[0], VERIFIED_AT_ANNOTATION: T(stamp[1])}
    return {
        "metadata": {
            "name": "gemma-cache",
            "uid": f"claim-{created}",
            "creationTimestamp": T(created),
            "annotations": annotations,
        }
    }


def job(state=None, created="11:00:00", name="gemma-fetch-a", done="11:01:00"):
    conditions = [{"type": state, "status": "True"}] if state else []
    status = {"conditions": conditions}
    if state == "Complete":
        status["completionTime"] = T(done)
    return {
        "metadata": {"name": name, "uid": f"{name}-{created}", "creationTimestamp": T(created)},
        "status": status,
    }


def deployment(created="11:02:00"):
    return {"metadata": {"name": "gemma", "creationTimestamp": T(created)}}


def unverified_pod(finished="11:05:00", where="lastState"):
    terminated = {
        "exitCode": 1,
        "finishedAt": T(finished),
        "message": "exo-runtime: load failed: cache not verified: /models/k/gemma.gguf has no "
        "gemma.gguf.verified.json",
    }
    state = {"waiting": {"reason": "CrashLoopBackOff"}}
    status = {"state": state, "lastState": {"terminated": terminated}}
    if where == "state":
        status = {"state": {"terminated": terminated}}
    return {
        "metadata": {"name": "gemma-abc", "labels": {"exo.dev/template-hash": "h"}},
        "status": {"phase": "Running", "containerStatuses": [{"name": "runtime", **status}]},
    }


def observed(**kw):
    kw.setdefault("previous", {})
    return Observed(model=model(), template_hash="h", **kw)


@pytest.mark.parametrize(
    ("case", "kw", "cached"),
    [
        ("a claim stamped with the key", {"claim": claim(stamp=(KEY, "11:01:00"))}, True),
        ("a claim stamped with another key", {"claim": claim(stamp=("other", "11:01:00"))}, False),
        ("a Job done on this claim", {"claim": claim(), "fetch_job": job("Complete")}, True),
        (
            "a Job that completed on a claim since deleted and re-created",
            {"claim": claim(created="11:30:00"), "fetch_job": job("Complete")},
            False,
        ),
        ("no claim at all", {"fetch_job": job("Complete")}, False),
        (
            "the key remembered in the status, on a claim older than the Deployment",
            {"claim": claim(), "previous": {"cacheKey": KEY}, "deployment": deployment()},
            True,
        ),
        (
            "the key remembered in the status, on a claim re-created after the Deployment",
            {
                "claim": claim(created="12:00:00"),
                "previous": {"cacheKey": KEY},
                "deployment": deployment(),
            },
            False,
        ),
        (
            "the key remembered in the status, and no Deployment to date it",
            {"claim": claim(), "previous": {"cacheKey": KEY}},
            False,
        ),
        (
            "a stamp, refuted by a runtime pod since",
            {"claim": claim(stamp=(KEY, "11:01:00")), "runtime_pods": [unverified_pod()]},
            False,
        ),
        (
            "a stamp newer than a pod's refutation (a refetch answered it)",
            {"claim": claim(stamp=(KEY, "11:06:00")), "runtime_pods": [unverified_pod()]},
            True,
        ),
        (
            "a refetch Job that completed after the refutation",
            {
                "claim": claim(stamp=(KEY, "11:01:00")),
                "fetch_job": job("Complete", created="11:05:30"),
                "runtime_pods": [unverified_pod(where="state")],
            },
            True,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_the_cache_counts_only_where_it_was_proven(case, kw, cached):
    assert is_cached(observed(**kw)) is cached, case


def test_a_refuted_cache_goes_back_to_downloading_not_load_failed():
    obs = observed(
        claim=claim(stamp=(KEY, "11:01:00")),
        previous={"cacheKey": KEY, "phase": "Ready"},
        runtime_pods=[unverified_pod()],
    )
    status, events = aggregate(obs)
    assert status["phase"] == "Downloading"
    cached = next(c for c in status["conditions"] if c["type"] == "ModelCached")
    assert cached["status"] == "False" and cached["reason"] == "CacheNotVerified"
    assert "has no gemma.gguf.verified.json" in status["message"]
    assert status["cacheKey"] is None  # written as null: the merge patch removes it
    assert [e.reason for e in events] == ["CacheNotVerified"]


def test_while_the_refetch_runs_the_model_is_downloading():
    obs = observed(
        claim=claim(stamp=(KEY, "11:01:00")),
        fetch_job=job(created="11:05:30"),
        runtime_pods=[unverified_pod()],
    )
    status, _ = aggregate(obs)
    assert status["phase"] == "Downloading"
    assert next(c for c in status["conditions"] if c["type"] == "ModelCached")["reason"] == (
        "Downloading"
    )


C = claim()
GOING = {**C, "metadata": {**C["metadata"], "deletionTimestamp": T("11:40:00")}}
CURRENT = "gemma-fetch-a"


def names(jobs):
    return [j["metadata"]["name"] for j in jobs]


@pytest.mark.parametrize(
    ("case", "jobs", "claim_", "cached", "refuted", "deleted"),
    [
        ("the current Job running", [job()], C, False, False, []),
        ("a superseded Job still running", [job(name="old"), job()], C, False, False, ["old"]),
        ("a superseded Job that failed", [job("Failed", name="old")], C, False, False, ["old"]),
        ("a superseded Job that completed: left to its TTL",
            [job("Complete", name="old")], C, False, False, []),
        ("the current Job, completed on a claim re-created since",
            [job("Complete")], claim(created="11:30:00"), False, False, [CURRENT]),
        ("the current Job, done, its claim gone", [job("Complete")], None, False, False, [CURRENT]),
        ("the current Job, completed, then refuted", [job("Complete")], C, False, True, [CURRENT]),
        ("the current Job, completed, the model cached", [job("Complete")], C, True, False, []),
        ("the current Job, failed: the Secret check decides", [job("Failed")], C, False, False, []),
        ("every Job, completed or not, while the claim is being deleted",
            [job("Complete", name="old"), job("Complete")], GOING, True, False, ["old", CURRENT]),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_fetch_jobs_whose_work_is_unwanted_are_deleted(
    case, jobs, claim_, cached, refuted, deleted
):
    doomed = fetch_jobs_to_delete(jobs, CURRENT, claim_, cached, refuted)
    assert names(doomed) == deleted, case


def test_a_completed_fetch_is_stamped_on_its_claim_once():
    done = job("Complete", done="11:01:07")
    want = stamp_wanted(KEY, claim(), done, None, cached=True)
    assert want == {VERIFIED_KEY_ANNOTATION: KEY, VERIFIED_AT_ANNOTATION: T("11:01:07")}
    assert stamp_wanted(KEY, claim(stamp=(KEY, "11:01:07")), done, None, cached=True) is None
    assert stamp_wanted(KEY, claim(), done, None, cached=False) is None


def test_a_key_remembered_from_before_stamps_is_stamped_with_the_deployments_age():
    want = stamp_wanted(KEY, claim(), None, deployment("11:02:00"), cached=True)
    assert want == {VERIFIED_KEY_ANNOTATION: KEY, VERIFIED_AT_ANNOTATION: T("11:02:00")}
