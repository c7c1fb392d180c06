"""Pure status aggregation: what was observed of an ExoModel's children → its status and events."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from exo_operator.cache_proof import (
    job_complete,
    proof_time,
    proven,
    refutation,
    refuted_since_proof,
)
from exo_operator.members import WorkerGroup, member_status, worker_group, worker_not_ready
from exo_operator.model import ExoModel
from exo_operator.naming import TEMPLATE_HASH_LABEL, endpoint, group_of, selector_string
from exo_operator.pod_problems import (
    Finding,
    is_terminating,
    pod_condition,
    pod_is_ready,
    pod_problem,
)
from exo_operator.runtime_events import (
    FETCH_EVENTS,
    download_progress,
    last_event,
    reported_context_length,
    reported_engine,
    step_seconds,
)
from exo_operator.source_plan import source_plan

# Problems that no wait will fix: with no replica ready they make the phase Failed.
FATAL_REASONS = {
    "LoadFailed", "OOMKilled", "CrashLoopBackOff", "FetchFailed", "ApplyFailed",
    "WorkerVersionMismatch",
}  # fmt: skip
# The steps of a model on its way: their Events are Normal; any other reason is a Warning.
PROGRESS_REASONS = {
    "FetchPending", "Downloading", "Cached", "ExistingClaim", "CreatingPods", "Loading",
    "NotAllReady", "Ready", "ScaledToZero", "WaitingForWorkers",
}  # fmt: skip
# Not-cached reasons under which a fetch is on its way: the phase is Downloading.
DOWNLOADING_REASONS = {"Downloading", "CacheNotVerified"}
# Fetch failures that no retry of the same fetch mends (the files make no model, or the source
# cannot be read): shown from the first pod that reports one, not after the Job's every retry.
PERMANENT_FETCH_REASONS = frozenset(
    {"NoWeights", "MissingPart", "NoConfig", "AmbiguousModel", "InvalidSource"}
)


@dataclass(frozen=True)
class Observed:
    """A snapshot of one ExoModel's children, as the operator's indexes hold them."""

    model: ExoModel
    previous: dict[str, Any]
    runtime_port: int = 8000
    claim: dict[str, Any] | None = None
    fetch_job: dict[str, Any] | None = None
    fetch_pods: list[dict[str, Any]] = field(default_factory=list)
    deployment: dict[str, Any] | None = None
    runtime_pods: list[dict[str, Any]] = field(default_factory=list)
    # The RPC worker pods of a model split across workers (spec.distributed).
    worker_pods: list[dict[str, Any]] = field(default_factory=list)
    template_hash: str | None = None
    fetch_log_tail: str | None = None
    # Runtime pod name -> the ready event read from its log (absent: not read, or no line).
    ready_events: dict[str, dict[str, Any]] = field(default_factory=dict)
    apply_error: str | None = None
    apply_retrying: bool = False
    # Children the operator would create but may not touch: "Kind name" of each.
    name_conflicts: tuple[str, ...] = ()
    # Pod name -> why its volumes are not attached or mounted (the pod's own Events).
    volume_problems: dict[str, Finding] = field(default_factory=dict)


@dataclass(frozen=True)
class Transition:
    """An Event to post on the ExoModel."""

    type: str
    reason: str
    message: str


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or [] if "type" in c}


def _job_condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def _fetch_failure(obs: Observed) -> Finding | None:
    """FetchFailed with the runtime's reason, once the Job has given up or a pod reported a
    failure that no retry mends."""
    job = obs.fetch_job
    if not job:
        return None
    given_up = _job_condition(job, "Failed")
    for event in _fetch_events(sorted(obs.fetch_pods, key=_created, reverse=True)):
        if event["event"] != "failed":
            continue
        reason = event.get("reason") or "Error"
        if given_up or reason in PERMANENT_FETCH_REASONS:
            return Finding("FetchFailed", f"{reason}: {event.get('error', '')}".strip(": "))
    if not given_up:
        return None
    return Finding(
        "FetchFailed",
        given_up.get("message") or given_up.get("reason") or "the fetch Job failed",
    )


def _name(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("name", "")


def _created(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("creationTimestamp") or ""


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round((_parse_time(end) - _parse_time(start)).total_seconds(), 1)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _download_message(download: dict[str, Any] | None) -> str:
    if not download or "bytes" not in download:
        return "downloading the model"
    text = f"downloaded {_human_bytes(download['bytes'])}"
    if download.get("totalBytes"):
        text += f" of {_human_bytes(download['totalBytes'])}"
    if download.get("bytesPerSecond"):
        text += f" at {_human_bytes(download['bytesPerSecond'])}/s"
    if download.get("etaSeconds") is not None:
        text += f", about {download['etaSeconds']:.0f} s left"
    return text


def _cache_finding(obs: Observed, key: str | None) -> tuple[bool, Finding]:
    """Whether the model is cached, and why (not)."""
    source = source_plan(obs.model)
    if not source.fetched:
        return True, Finding("ExistingClaim", f"served from claim {source.claim_name}")
    assert key is not None
    refuted = refutation(obs.runtime_pods)
    if refuted_since_proof(refuted, proof_time(key, obs.claim, obs.fetch_job)):
        assert refuted is not None
        if not obs.fetch_job or job_complete(obs.fetch_job):
            return False, Finding(
                "CacheNotVerified", f"pod {refuted.pod}: {refuted.message}; fetching again"
            )
        # else the new fetch is on its way: report it like any other
    elif proven(key, obs.claim, obs.fetch_job, obs.previous.get("cacheKey"), obs.deployment):
        return True, Finding("Cached", f"verified model cached under /models/{key}")
    failure = _fetch_failure(obs)
    if failure:
        return False, failure
    if obs.claim and (obs.claim.get("status") or {}).get("phase") == "Pending":
        pending = [pod_problem(p, obs.volume_problems.get(_name(p))) for p in obs.fetch_pods]
        why = next((f.message for f in pending if f), "waiting for a volume")
        return False, Finding(
            "PVCPending", f"claim {obs.claim['metadata']['name']} is Pending: {why}"
        )
    for pod in obs.fetch_pods:
        problem = pod_problem(pod, obs.volume_problems.get(_name(pod)))
        if problem and not is_terminating(pod):
            return False, Finding(problem.reason, f"fetch pod: {problem.message}")
    if not obs.fetch_job:
        return False, Finding("FetchPending", "creating the fetch Job")
    return False, Finding("Downloading", "")


def is_cached(obs: Observed) -> bool:
    """Whether the verified model file is in the cache (or on the user's claim) for this spec."""
    return _cache_finding(obs, source_plan(obs.model).cache_key)[0]


def model_bytes(obs: Observed) -> int | None:
    """The model file's size, once a download has said it."""
    download = _done_download(obs) or obs.previous.get("download") or {}
    size = download.get("totalBytes")
    return size if isinstance(size, int) else None


def _engine(model: ExoModel) -> str:
    """The engine the spec and the model's format imply (the runtime's selector decides)."""
    if model.spec.engine != "auto":
        return model.spec.engine
    return "llamacpp" if source_plan(model).model_path.endswith(".gguf") else "mlx"


def _condition(
    previous: dict[str, Any], kind: str, ok: bool, finding: Finding, generation: int, now: str
):
    status = "True" if ok else "False"
    old = previous.get(kind) or {}
    since = old.get("lastTransitionTime") if old.get("status") == status else now
    return {
        "type": kind,
        "status": status,
        "reason": finding.reason,
        "message": finding.message,
        "lastTransitionTime": since or now,
        "observedGeneration": generation,
    }


def _load_seconds(pods: list[dict[str, Any]]) -> float | None:
    """Container start to first readiness of the slowest ready pod: load plus warmup."""
    best = None
    for pod in pods:
        ready = pod_condition(pod, "Ready") or {}
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            started = ((cs.get("state") or {}).get("running") or {}).get("startedAt")
            seconds = _seconds_between(started, ready.get("lastTransitionTime"))
            if seconds is not None and seconds >= 0 and (best is None or seconds > best):
                best = seconds
    return best


def _reported_step_seconds(
    pods: list[dict[str, Any]], ready_events: dict[str, dict[str, Any]]
) -> dict[str, float] | None:
    """Load and warmup seconds as the slowest ready pod's runtime reported them, if any did."""
    reported = [step_seconds(ready_events.get(p["metadata"]["name"])) for p in pods]
    return max(filter(None, reported), key=lambda s: s["loadSeconds"], default=None)


def _reported_serving(
    model: ExoModel, pods: list[dict[str, Any]], ready_events: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """status.engine and status.contextLength: what the ready pods' runtimes reported, else the
    engine the spec implies (and no context, which only a runtime knows)."""
    events = [ready_events.get(_name(p)) for p in pods]
    engines = {e for e in map(reported_engine, events) if e}
    out: dict[str, Any] = {"engine": engines.pop() if len(engines) == 1 else _engine(model)}
    contexts = [c for c in map(reported_context_length, events) if c]
    if contexts:
        # Replicas of one template agree; if not, the least is what every one of them holds.
        out["contextLength"] = min(contexts)
    return out


def _download_seconds(obs: Observed) -> float | None:
    """How long the download took, as the fetch reported it, else as the Job's times show."""
    for event in _fetch_events(obs.fetch_pods):
        if event["event"] == "done" and isinstance(event.get("seconds"), int | float):
            return round(float(event["seconds"]), 1)
    job_status = (obs.fetch_job or {}).get("status") or {}
    return _seconds_between(job_status.get("startTime"), job_status.get("completionTime"))


def _done_download(obs: Observed) -> dict[str, Any] | None:
    """status.download as the fetch containers' termination messages last reported it."""
    return next(filter(None, map(download_progress, _fetch_events(obs.fetch_pods))), None)


def _fetch_events(pods: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The last event each fetch container wrote into its termination message, pod by pod:
    how a finished fetch tells the operator what it did."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            message = ((cs.get("state") or {}).get("terminated") or {}).get("message")
            event = last_event(message, FETCH_EVENTS)
            if event:
                yield event


@dataclass(frozen=True)
class RuntimeReplicas:
    """The runtime pods, sorted the ways the status counts them."""

    # Not terminating.
    live: list[dict[str, Any]]
    # Live and of the current template (for a split model, of a group the spec still wants).
    current: list[dict[str, Any]]
    ready_current: list[dict[str, Any]]
    # Ready of any template: a rollout's old pods still serve.
    ready_any: list[dict[str, Any]]


def _runtime_replicas(obs: Observed) -> RuntimeReplicas:
    """Which runtime pods count toward the spec, so that a rollout or a scale-down is not
    mistaken for serving replicas."""
    model = obs.model
    live = [p for p in obs.runtime_pods if not is_terminating(p)]
    current = [
        p
        for p in live
        if (p["metadata"].get("labels") or {}).get(TEMPLATE_HASH_LABEL) == obs.template_hash
        # A split model's groups share the hash: a head of a group scaled away, its
        # Deployment deleted, counts no more while it goes.
        and (not model.spec.distributed or group_of(p) < model.spec.replicas)
    ]
    return RuntimeReplicas(
        live=live,
        current=current,
        ready_current=[p for p in current if pod_is_ready(p)],
        ready_any=[p for p in live if pod_is_ready(p)],
    )


def _replica_problems(
    obs: Observed, replicas: RuntimeReplicas, group: WorkerGroup
) -> list[Finding]:
    """Why the runtime pods and workers that are not ready do not run, heads first."""
    findings = (
        pod_problem(p, obs.volume_problems.get(_name(p)))
        for p in replicas.live
        if not pod_is_ready(p)
    )
    return [f for f in findings if f] + group.problems


def _download(obs: Observed, prev: dict[str, Any], cached: bool) -> dict[str, Any] | None:
    """status.download: the running fetch's progress while not cached, the finished fetch's
    once cached, else what was last reported (a restarted operator keeps showing it)."""
    if not cached:
        tail = download_progress(last_event(obs.fetch_log_tail, FETCH_EVENTS))
        return tail or prev.get("download")
    return _done_download(obs) or prev.get("download")


def _with_progress(cache_why: Finding, download: dict[str, Any] | None) -> Finding:
    """A Downloading finding worded with how far the download has come."""
    if cache_why.reason == "Downloading":
        return Finding("Downloading", _download_message(download))
    return cache_why


def _apply_trouble(obs: Observed) -> tuple[str, Finding] | None:
    """The phase when the children could not be applied: that outranks what they show."""
    if obs.name_conflicts:
        return "Failed", name_conflict(obs.model, obs.name_conflicts)
    if obs.apply_error and obs.apply_retrying:
        return "Pending", Finding("ApplyRetrying", f"{obs.apply_error} (retrying)")
    if obs.apply_error:
        return "Failed", Finding("ApplyFailed", obs.apply_error)
    return None


def _uncached_phase(cache_why: Finding) -> str:
    """The phase while the model is not in the cache: a failed fetch is final, a running one
    is Downloading, anything else waits."""
    if cache_why.reason == "FetchFailed":
        return "Failed"
    if cache_why.reason in DOWNLOADING_REASONS:
        return "Downloading"
    return "Pending"


def _serving_phase(
    model: ExoModel,
    prev: dict[str, Any],
    replicas: RuntimeReplicas,
    group: WorkerGroup,
    problems: list[Finding],
) -> tuple[str, Finding]:
    """The phase of a cached model from its replicas: how many serve, and why the rest do not."""
    desired = model.spec.replicas
    ready = len(replicas.ready_current)
    if desired == 0:
        return "Pending", Finding("ScaledToZero", "spec.replicas is 0")
    if replicas.ready_current and group.not_ready:
        return _worker_phase(model, prev, replicas, group)
    if ready >= desired:
        workers = model.spec.distributed.workers if model.spec.distributed else 0
        across = f" across {workers} workers{' each' if desired > 1 else ''}" if workers else ""
        loaded = f"{ready}/{desired} replicas loaded{across} and warmed up"
        return "Ready", Finding("Ready", loaded)
    if problems:
        return _problem_phase(prev, replicas, problems[0], desired)
    if replicas.ready_any:
        return "Degraded", Finding("NotAllReady", f"{ready}/{desired} replicas ready")
    if replicas.live:
        return "Loading", Finding("Loading", "loading the model and warming up")
    return "Pending", Finding("CreatingPods", "waiting for runtime pods")


def _worker_phase(
    model: ExoModel, prev: dict[str, Any], replicas: RuntimeReplicas, group: WorkerGroup
) -> tuple[str, Finding]:
    """A ready head with a worker of its group not ready: it serves only with its whole group
    and reloads onto a replaced worker, while another group that is whole keeps serving."""
    # Groups that serve: a ready head of the current spec and every worker of its group ready.
    serving = {group_of(p) for p in replicas.ready_current} - set(group.broken)
    if serving or prev.get("phase") in ("Ready", "Degraded"):
        return "Degraded", Finding("WorkerNotReady", worker_not_ready(model, group))
    return "Loading", Finding("WaitingForWorkers", worker_not_ready(model, group))


def _problem_phase(
    prev: dict[str, Any], replicas: RuntimeReplicas, first: Finding, desired: int
) -> tuple[str, Finding]:
    """Too few replicas ready and a pod with a problem: Degraded while some serve (or a lost
    worker comes back), Failed when no wait will fix it, else Pending."""
    recovering = first.reason == "WorkerLost" and prev.get("phase") in ("Ready", "Degraded")
    if replicas.ready_any or recovering:
        phase = "Degraded"
    elif first.reason in FATAL_REASONS:
        phase = "Failed"
    else:
        phase = "Pending"
    ready = len(replicas.ready_current)
    return phase, Finding(first.reason, f"{ready}/{desired} ready; {first.message}")


def _phase(
    obs: Observed,
    prev: dict[str, Any],
    cached: bool,
    cache_why: Finding,
    replicas: RuntimeReplicas,
    group: WorkerGroup,
) -> tuple[str, Finding]:
    """status.phase and its reason: apply trouble first, then the cache, then the replicas."""
    trouble = _apply_trouble(obs)
    if trouble:
        return trouble
    if not cached:
        return _uncached_phase(cache_why), cache_why
    problems = _replica_problems(obs, replicas, group)
    return _serving_phase(obs.model, prev, replicas, group, problems)


def _status_conditions(
    prev_conditions: dict[str, dict[str, Any]],
    generation: int,
    stamp: str,
    cached: bool,
    cache_why: Finding,
    replicas: RuntimeReplicas,
    phase: str,
    why: Finding,
) -> list[dict[str, Any]]:
    """ModelCached, Available and Ready, each keeping its transition time while it holds."""
    serving = len(replicas.ready_any)
    available_why = (
        Finding("MinimumReplicasReady", f"{serving} replicas serving")
        if replicas.ready_any
        else Finding(why.reason, why.message)
    )
    return [
        _condition(prev_conditions, "ModelCached", cached, cache_why, generation, stamp),
        _condition(prev_conditions, "Available", bool(serving), available_why, generation, stamp),
        _condition(prev_conditions, "Ready", phase == "Ready", why, generation, stamp),
    ]


def _cache_key_status(prev: dict[str, Any], key: str | None, cached: bool) -> dict[str, Any]:
    """status.cacheKey: the proven key, None to remove a key no longer proven (merge patch), or
    the old source's key until the new one is cached."""
    if cached and key:
        return {"cacheKey": key}
    if prev.get("cacheKey") == key:
        return {"cacheKey": None}
    if prev.get("cacheKey"):
        return {"cacheKey": prev["cacheKey"]}
    return {}


def _timings(
    obs: Observed,
    prev: dict[str, Any],
    key: str | None,
    cached: bool,
    ready_current: list[dict[str, Any]],
) -> dict[str, Any]:
    """status.timings: the download's seconds once cached, and load and warmup seconds as the
    runtime reported them (else as the pods' conditions show them)."""
    timings = dict(prev.get("timings") or {})
    # A new source's download replaces the old one's time.
    if cached and key and (prev.get("cacheKey") != key or "downloadSeconds" not in timings):
        seconds = _download_seconds(obs)
        if seconds is not None:
            timings["downloadSeconds"] = seconds
    reported = _reported_step_seconds(ready_current, obs.ready_events)
    if reported:
        timings.update(reported)
    elif "warmupSeconds" not in timings:
        # No runtime figures (kwok has no kubelet, so no logs): container start to Ready is
        # load and warmup together. Figures a runtime reported stay until another replaces
        # them, so a restarted operator or a rotated log never swaps them for this one.
        load = _load_seconds(ready_current)
        if load is not None:
            timings["loadSeconds"] = load
    return timings


def _transitions(
    prev: dict[str, Any], prev_conditions: dict[str, dict[str, Any]], phase: str, why: Finding
) -> list[Transition]:
    """One Event when the phase or its reason changed: Normal on the way, Warning otherwise."""
    previous_reason = (prev_conditions.get("Ready") or {}).get("reason")
    if phase == prev.get("phase") and why.reason == previous_reason:
        return []
    kind = "Normal" if why.reason in PROGRESS_REASONS else "Warning"
    return [Transition(kind, why.reason, f"{phase}: {why.message}")]


def aggregate(
    obs: Observed, now: datetime | None = None
) -> tuple[dict[str, Any], list[Transition]]:
    """The status an ExoModel should have, and the Events its transitions deserve."""
    model = obs.model
    prev = obs.previous or {}
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    key = source_plan(model).cache_key
    desired = model.spec.replicas

    cached, cache_why = _cache_finding(obs, key)
    download = _download(obs, prev, cached)
    cache_why = _with_progress(cache_why, download)
    replicas = _runtime_replicas(obs)
    group = worker_group(model, obs.worker_pods, obs.volume_problems)
    phase, why = _phase(obs, prev, cached, cache_why, replicas, group)
    prev_conditions = _conditions(prev)
    ready = len(replicas.ready_current)

    status: dict[str, Any] = {
        "phase": phase,
        "message": why.message,
        "observedGeneration": model.generation,
        "replicas": len(replicas.live),
        "readyReplicas": ready,
        "readyText": f"{ready}/{desired}",
        **member_status(model, prev, replicas.current, group, obs.ready_events),
        "selector": selector_string(model),
        "endpoint": endpoint(model, obs.runtime_port),
        **_reported_serving(model, replicas.ready_current, obs.ready_events),
        "conditions": _status_conditions(
            prev_conditions, model.generation, stamp, cached, cache_why, replicas, phase, why
        ),
        **_cache_key_status(prev, key, cached),
    }
    if download:
        status["download"] = download
    timings = _timings(obs, prev, key, cached, replicas.ready_current)
    if timings:
        status["timings"] = timings
    return status, _transitions(prev, prev_conditions, phase, why)


def name_conflict(model: ExoModel, conflicts: tuple[str, ...]) -> Finding:
    """NameConflict, naming each object the operator found in the way and does not own."""
    names = ", ".join(conflicts)
    return Finding(
        "NameConflict",
        f"{names} already exists and is not owned by ExoModel {model.name}; the operator leaves "
        f"it alone: rename the ExoModel or remove that object",
    )


def status_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether writing `new` would change anything the operator owns in `old`."""
    return any(old.get(k) != v for k, v in new.items())
