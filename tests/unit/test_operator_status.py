"""Status aggregation: observed children → phase, conditions, counts and reasons."""

import json
from datetime import UTC, datetime

import pytest
from _models import model
from exo_operator.cache import cache_key
from exo_operator.cache_proof import VERIFIED_AT_ANNOTATION, VERIFIED_KEY_ANNOTATION
from exo_operator.pod_problems import Finding, pod_problem
from exo_operator.status import (
    Observed,
    aggregate,
    is_cached,
    model_bytes,
    status_changed,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
HASH = "tmpl-1"


def pod(ready=False, template=HASH, **status):
    conditions = [{"type": "Ready", "status": "True" if ready else "False",
                   "lastTransitionTime": "2026-01-01T11:00:30Z"}]  # fmt: skip
    return {
        "metadata": {"name": f"p-{id(status)}", "labels": {"exo.dev/template-hash": template}},
        "status": {"conditions": conditions + status.pop("conditions", []), **status},
    }


def running(started="2026-01-01T11:00:00Z"):
    return [{"name": "runtime", "state": {"running": {"startedAt": started}}}]


def job(condition=None, created="2026-01-01T11:00:00Z", **status):
    conds = (
        [{"type": condition, "status": "True", "message": "BackoffLimitExceeded"}]
        if condition
        else []
    )
    return {
        "metadata": {"name": "gemma-fetch", "uid": "job-1", "creationTimestamp": created},
        "status": {"conditions": conds, **status},
    }


def claim(created="2026-01-01T10:00:00Z", stamp=None, **status):
    """The cache claim; stamp=(key, at) is the proof a completed fetch left on it."""
    annotations = {}
    if stamp:
        annotations = {VERIFIED_KEY_ANNOTATION: stamp[0], VERIFIED_AT_ANNOTATION: stamp[1]}
    meta = {"name": "gemma-cache", "uid": "claim-1", "creationTimestamp": created}
    return {"metadata": {**meta, "annotations": annotations}, "status": status}


def cached_obs(m=None, **kw):
    m = m or model()
    key = cache_key(m.spec.source)
    kw.setdefault("claim", claim(stamp=(key, "2026-01-01T11:01:00Z")))
    return Observed(model=m, previous={"cacheKey": key}, template_hash=HASH, **kw)


def cond(status, kind):
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_all_replicas_warmed_up_is_ready_with_endpoint_and_load_time():
    status, events = aggregate(
        cached_obs(model(replicas=2), runtime_pods=[pod(True, containerStatuses=running())] * 2),
        NOW,
    )
    assert status["phase"] == "Ready"
    assert cond(status, "Ready")["status"] == "True"
    assert cond(status, "Available")["status"] == "True"
    assert cond(status, "ModelCached")["status"] == "True"
    assert status["readyReplicas"] == 2 and status["replicas"] == 2 and status["readyText"] == "2/2"
    assert status["endpoint"] == "http://gemma.ml.svc:8000/v1"
    assert status["selector"] == "exo.dev/component=runtime,exo.dev/model=gemma"
    assert status["engine"] == "llamacpp"
    assert status["observedGeneration"] == 3
    assert status["timings"]["loadSeconds"] == 30.0
    assert [e.reason for e in events] == ["Ready"]


def test_some_but_not_all_ready_is_degraded():
    status, _ = aggregate(cached_obs(model(replicas=2), runtime_pods=[pod(True), pod(False)]), NOW)
    assert status["phase"] == "Degraded"
    assert cond(status, "Ready")["status"] == "False"
    assert cond(status, "Available")["status"] == "True"


def test_pods_of_the_old_spec_do_not_count_as_ready():
    status, _ = aggregate(cached_obs(runtime_pods=[pod(True, template="old")]), NOW)
    assert status["readyReplicas"] == 0
    assert status["phase"] != "Ready"


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
}


@pytest.mark.parametrize(
    ("pod_status", "reason", "phase", "words"),
    [
        ({"conditions": [UNSCHEDULABLE]}, "Unschedulable", "Pending", "Insufficient nvidia"),
        (
            {"containerStatuses": [{"name": "runtime", "state": {"waiting": {
                "reason": "ImagePullBackOff", "message": "Back-off pulling image x"}}}]},
            "ImagePullBackOff", "Pending", "pulling image",
        ),
        (
            {"containerStatuses": [{"name": "runtime",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                    "message": "exo-runtime: load failed: unknown model architecture"}}}]},
            "LoadFailed", "Failed", "unknown model architecture",
        ),
        (
            {"containerStatuses": [{"name": "runtime",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]},
            "OOMKilled", "Failed", "spec.resources.memory",
        ),
        (
            {"containerStatuses": [{"name": "runtime",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m"}}}]},
            "CrashLoopBackOff", "Failed", "back-off",
        ),
    ],
)  # fmt: skip
def test_every_stuck_state_says_why(pod_status, reason, phase, words):
    status, events = aggregate(cached_obs(runtime_pods=[pod(**pod_status)]), NOW)
    assert status["phase"] == phase
    ready = cond(status, "Ready")
    assert ready["reason"] == reason
    assert words in ready["message"] and words in status["message"]
    assert events and events[0].reason == reason


def test_progress_events_are_normal_and_problems_are_warnings():
    _, partly = aggregate(cached_obs(model(replicas=2), runtime_pods=[pod(True), pod(False)]), NOW)
    _, stuck = aggregate(cached_obs(runtime_pods=[pod(conditions=[UNSCHEDULABLE])]), NOW)
    assert [(e.type, e.reason) for e in partly] == [("Normal", "NotAllReady")]
    assert [(e.type, e.reason) for e in stuck] == [("Warning", "Unschedulable")]


def test_running_pods_not_yet_ready_are_loading():
    status, _ = aggregate(cached_obs(runtime_pods=[pod(False, containerStatuses=running())]), NOW)
    assert status["phase"] == "Loading"


def test_download_progress_comes_from_the_fetch_log():
    tail = '{"event":"progress","state":"downloading","bytes":512,"totalBytes":2048,' \
        '"bytesPerSecond":256,"etaSeconds":6}'  # fmt: skip
    status, _ = aggregate(
        Observed(model=model(), previous={}, fetch_job=job(), fetch_log_tail=tail), NOW
    )
    assert status["phase"] == "Downloading"
    assert status["download"] == {
        "bytes": 512,
        "totalBytes": 2048,
        "bytesPerSecond": 256.0,
        "etaSeconds": 6.0,
    }
    assert cond(status, "ModelCached")["reason"] == "Downloading"
    assert "512.0 B of 2.0 KiB" in status["message"]


def failed_fetch_pod(reason, error):
    final = json.dumps({"event": "failed", "reason": reason, "error": error})
    terminated = {"exitCode": 1, "message": final}
    return {
        "metadata": {"name": "f", "creationTimestamp": "2026-01-01T11:00:00Z"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"name": "fetch", "state": {"terminated": terminated}}],
        },
    }


@pytest.mark.parametrize(
    ("reason", "job_given_up", "reported"),
    [
        ("ChecksumMismatch", True, True),
        ("NetworkError", False, False),  # the Job's next try may get through
        # Files that make no model make none on the next try either: no wait for the retries.
        ("NoWeights", False, True),
        ("MissingPart", False, True),
        ("NoConfig", False, True),
        ("AmbiguousModel", False, True),
        ("InvalidSource", False, True),
        ("NoConfig", True, True),
    ],
)
def test_fetch_failure_reports_the_runtime_reason(reason, job_given_up, reported):
    obs = Observed(
        model=model(),
        previous={},
        fetch_job=job("Failed" if job_given_up else None),
        fetch_pods=[failed_fetch_pod(reason, "the files say why")],
    )
    status, events = aggregate(obs, NOW)
    if not reported:
        assert status["phase"] != "Failed"
        assert cond(status, "ModelCached")["reason"] != "FetchFailed"
        return
    assert status["phase"] == "Failed"
    assert cond(status, "ModelCached")["reason"] == "FetchFailed"
    assert status["message"] == f"{reason}: the files say why"
    assert events[0].type == "Warning"


def test_completed_fetch_records_the_cache_key_and_download_time():
    m = model()
    done = job("Complete", startTime="2026-01-01T11:00:00Z", completionTime="2026-01-01T11:01:05Z")
    obs = Observed(model=m, previous={}, claim=claim(), fetch_job=done, template_hash=HASH)
    status, _ = aggregate(obs, NOW)
    assert status["cacheKey"] == cache_key(m.spec.source)
    assert status["timings"]["downloadSeconds"] == 65.0
    assert cond(status, "ModelCached")["status"] == "True"
    # With the Job gone (its TTL), the claim's stamp still says the model is cached.
    stamped = claim(stamp=(cache_key(m.spec.source), "2026-01-01T11:01:05Z"))
    again, _ = aggregate(Observed(model=m, previous=status, claim=stamped, template_hash=HASH), NOW)
    assert cond(again, "ModelCached")["status"] == "True"


def test_pending_claim_says_so_with_the_schedulers_words():
    pending = claim(phase="Pending")
    fetch_pod = pod(conditions=[UNSCHEDULABLE])
    status, _ = aggregate(
        Observed(
            model=model(), previous={}, claim=pending, fetch_job=job(), fetch_pods=[fetch_pod]
        ),
        NOW,
    )
    assert status["phase"] == "Pending"
    assert cond(status, "ModelCached")["reason"] == "PVCPending"
    assert "gemma-cache is Pending" in status["message"]


def test_unchanged_observation_keeps_transition_times_and_posts_no_event():
    obs = cached_obs(runtime_pods=[pod(True)])
    first, _ = aggregate(obs, NOW)
    later = datetime(2026, 1, 1, 13, 0, 0, tzinfo=UTC)
    second, events = aggregate(Observed(**{**obs.__dict__, "previous": first}), later)
    assert second == first
    assert events == []


def test_scaled_to_zero_is_not_ready_and_says_why():
    status, _ = aggregate(cached_obs(model(replicas=0)), NOW)
    assert status["phase"] == "Pending" and cond(status, "Ready")["reason"] == "ScaledToZero"


def test_refused_child_is_a_failure_with_the_apiservers_words():
    status, _ = aggregate(
        cached_obs(apply_error="PersistentVolumeClaim gemma-cache was refused: x"), NOW
    )
    assert status["phase"] == "Failed" and "was refused" in status["message"]


def test_child_the_apiserver_cannot_take_now_is_pending_and_says_so():
    obs = cached_obs(apply_error="Service gemma was refused: range is full", apply_retrying=True)
    status, _ = aggregate(obs, NOW)
    assert status["phase"] == "Pending" and cond(status, "Ready")["reason"] == "ApplyRetrying"
    assert "range is full" in status["message"]


def test_pod_problem_of_a_healthy_pod_is_none():
    assert pod_problem(pod(True, containerStatuses=running())) is None


def test_cached_and_model_size_come_from_the_finished_fetch():
    m = model()
    done_pod = {
        "metadata": {"name": "f"},
        "status": {"containerStatuses": [{"name": "fetch", "state": {"terminated": {
            "exitCode": 0, "message": '{"event":"done","bytes":2048,"sha256":"x","seconds":3}'}}}]},
    }  # fmt: skip
    obs = Observed(
        model=m, previous={}, claim=claim(), fetch_job=job("Complete"), fetch_pods=[done_pod]
    )
    assert is_cached(obs) and model_bytes(obs) == 2048
    status, _ = aggregate(obs, NOW)
    assert status["timings"]["downloadSeconds"] == 3.0
    assert not is_cached(Observed(model=m, previous={}, fetch_job=job()))


def named(name, p):
    p["metadata"]["name"] = name
    return p


def ready_line(load, warmup, engine="llamacpp", context=None):
    line = {"event": "ready", "loadSeconds": load, "warmupSeconds": warmup, "engine": engine}
    return line | ({"contextLength": context} if context is not None else {})


FOLDER = {
    "files": [
        {"url": "https://m.example/config.json", "sha256": "a" * 64},
        {"url": "https://m.example/model.safetensors", "sha256": "a" * 64},
    ]
}


@pytest.mark.parametrize(
    ("source", "events", "engine", "context"),
    [
        (None, {}, "llamacpp", None),  # nothing read: what the .gguf implies, no context
        (None, {"a": ready_line(1, 1, context=2048)}, "llamacpp", 2048),
        (FOLDER, {}, "mlx", None),  # a folder of files: MLX
        (FOLDER, {"a": ready_line(1, 1, engine="mlx", context=4096)}, "mlx", 4096),
        (None, {"a": ready_line(1, 1, context=True)}, "llamacpp", None),  # not a number
        (None, {"a": ready_line(1, 1, context=0)}, "llamacpp", None),
        (None, {"a": ready_line(1, 1, engine="vllm", context=512)}, "llamacpp", 512),
        # Two replicas that disagree (they should not): the least, which both can hold.
        (None, {"a": ready_line(1, 1, context=4096), "b": ready_line(1, 1, context=1024)},
         "llamacpp", 1024),
    ],
    ids=["implied", "reported", "folder-implied", "folder-reported", "bool", "zero",
         "unknown-engine", "least"],
)  # fmt: skip
def test_engine_and_context_are_what_the_ready_runtime_reported(source, events, engine, context):
    m = model(replicas=2, **({"source": source} if source else {}))
    pods = [named(n, pod(True, containerStatuses=running())) for n in ("a", "b")]
    status, _ = aggregate(cached_obs(m, runtime_pods=pods, ready_events=events), NOW)
    assert status["engine"] == engine
    assert status.get("contextLength") == context


def test_a_reported_context_stays_when_the_line_cannot_be_read_again():
    pods = [named("a", pod(True, containerStatuses=running()))]
    obs = cached_obs(runtime_pods=pods, ready_events={"a": ready_line(4.0, 0.5, context=2048)})
    first, _ = aggregate(obs, NOW)
    again, _ = aggregate(Observed(**{**obs.__dict__, "previous": first, "ready_events": {}}), NOW)
    assert not status_changed(first, again)  # a merge patch leaves contextLength as it was


def test_step_times_are_the_slowest_replicas_as_its_runtime_reported_them():
    pods = [named(n, pod(True, containerStatuses=running())) for n in ("a", "b")]
    events = {"a": ready_line(2.5, 0.25), "b": ready_line(3.125, 0.0634)}
    status, _ = aggregate(
        cached_obs(model(replicas=2), runtime_pods=pods, ready_events=events), NOW
    )
    assert status["timings"] == {"loadSeconds": 3.125, "warmupSeconds": 0.063}


def test_without_a_ready_line_load_is_start_to_ready_and_warmup_is_unset():
    pods = [named("a", pod(True, containerStatuses=running()))]
    status, _ = aggregate(cached_obs(runtime_pods=pods, ready_events={"x": ready_line(1, 1)}), NOW)
    assert status["timings"] == {"loadSeconds": 30.0}


def test_a_ready_line_read_after_ready_replaces_the_start_to_ready_figure():
    pods = [named("a", pod(True, containerStatuses=running()))]
    first, _ = aggregate(cached_obs(runtime_pods=pods), NOW)
    obs = cached_obs(runtime_pods=pods, ready_events={"a": ready_line(4.0, 0.5)})
    second, events = aggregate(Observed(**{**obs.__dict__, "previous": first}), NOW)
    assert first["timings"] == {"loadSeconds": 30.0}
    assert second["timings"] == {"loadSeconds": 4.0, "warmupSeconds": 0.5}
    assert events == []  # the same Ready phase: no second Ready event


def test_reported_step_times_stay_when_the_line_cannot_be_read_again():
    # An operator restarted after the log rotated: the status it wrote before stands, unchanged.
    pods = [named("a", pod(True, containerStatuses=running()))]
    obs = cached_obs(runtime_pods=pods, ready_events={"a": ready_line(4.0, 0.5)})
    first, _ = aggregate(obs, NOW)
    again, _ = aggregate(Observed(**{**obs.__dict__, "previous": first, "ready_events": {}}), NOW)
    assert again["timings"] == {"loadSeconds": 4.0, "warmupSeconds": 0.5}
    assert not status_changed(first, again)


def test_ready_lines_of_pods_of_the_old_spec_do_not_count():
    old = named("old", pod(True, template="old", containerStatuses=running()))
    new = named("new", pod(True, containerStatuses=running()))
    events = {"old": ready_line(9.0, 9.0)}
    status, _ = aggregate(cached_obs(runtime_pods=[old, new], ready_events=events), NOW)
    assert status["timings"] == {"loadSeconds": 30.0}


def test_a_child_name_taken_by_someone_else_fails_with_name_conflict_naming_it():
    obs = cached_obs(name_conflicts=("Service gemma", "PersistentVolumeClaim gemma-cache"))
    status, events = aggregate(obs, NOW)
    assert status["phase"] == "Failed"
    assert cond(status, "Ready")["reason"] == "NameConflict"
    assert "Service gemma, PersistentVolumeClaim gemma-cache" in status["message"]
    assert "not owned by ExoModel gemma" in status["message"]
    assert [(e.type, e.reason) for e in events] == [("Warning", "NameConflict")]


SCHEDULED = {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T11:00:00Z"}
CREATING = {"containerStatuses": [{"name": "runtime", "state": {"waiting": {
    "reason": "ContainerCreating"}}}]}  # fmt: skip
STUCK = {"phase": "Pending", "conditions": [SCHEDULED], **CREATING}
MULTI_ATTACH = Finding(
    "FailedAttachVolume",
    'Multi-Attach error for volume "pvc-1" Volume is already used by pod(s) gemma-abc',
)


@pytest.mark.parametrize(
    ("case", "pod_status", "volume", "reason"),
    [
        ("creating, its Events name the volume", STUCK, MULTI_ATTACH, "FailedAttachVolume"),
        ("creating, nothing read yet", STUCK, None, None),
        ("running since: old Events no longer apply",
            {"phase": "Running", "conditions": [SCHEDULED], "containerStatuses": running()},
            MULTI_ATTACH, None),
        ("an image problem outranks the volume words",
            {"phase": "Pending", "conditions": [SCHEDULED], "containerStatuses": [{
                "name": "runtime", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]},
            MULTI_ATTACH, "ImagePullBackOff"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_a_pod_stuck_on_its_volumes_says_so_in_the_words_of_its_events(
    case, pod_status, volume, reason
):
    problem = pod_problem(pod(**pod_status), volume)
    assert (problem.reason if problem else None) == reason, case


def test_volume_trouble_of_the_runtime_pods_is_the_models_reason():
    stuck = named("r1", pod(phase="Pending", conditions=[SCHEDULED], **CREATING))
    status, _ = aggregate(cached_obs(runtime_pods=[stuck], volume_problems={"r1": MULTI_ATTACH}))
    assert status["phase"] == "Pending"
    assert cond(status, "Ready")["reason"] == "FailedAttachVolume"
    assert "Multi-Attach error" in status["message"]


def test_volume_trouble_of_the_fetch_pod_is_the_caches_reason():
    stuck = named("f1", pod(phase="Pending", conditions=[SCHEDULED], **CREATING))
    mount = Finding("FailedMount", "MountVolume.SetUp failed for volume pvc-1: timed out")
    obs = Observed(
        model=model(),
        previous={},
        claim=claim(phase="Bound"),
        fetch_job=job(),
        fetch_pods=[stuck],
        volume_problems={"f1": mount},
    )
    status, _ = aggregate(obs, NOW)
    assert cond(status, "ModelCached")["reason"] == "FailedMount"
    assert "timed out" in status["message"]
