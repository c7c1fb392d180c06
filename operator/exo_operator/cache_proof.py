"""Whether the cache claim holds the verified model: proven on this claim, never remembered.

A fetch proves the cache on the claim it ran against: when its Job completes, the operator
stamps the claim with the cache key and the time. A re-created claim carries no stamp, so it
is fetched again; a runtime that finds the file unverified refutes the proof, and the model
is fetched again too. Pure: reads observed objects, calls nothing.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

VERIFIED_KEY_ANNOTATION = "exo.dev/verified-cache-key"
VERIFIED_AT_ANNOTATION = "exo.dev/verified-at"
# What `exo-runtime serve --require-verified` writes as its termination message.
CACHE_NOT_VERIFIED_MARK = "exo-runtime: load failed: cache not verified:"


@dataclass(frozen=True)
class Refutation:
    """A runtime pod that found the cache unverified, and when it said so."""

    pod: str
    message: str
    at: str


def _meta(obj: dict[str, Any] | None) -> dict[str, Any]:
    return (obj or {}).get("metadata") or {}


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _job_done(job: dict[str, Any], kind: str) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def job_complete(job: dict[str, Any] | None) -> bool:
    return bool(job) and _job_done(job, "Complete")


def job_failed(job: dict[str, Any] | None) -> bool:
    return bool(job) and _job_done(job, "Failed")


def claim_stamp(claim: dict[str, Any] | None) -> tuple[str, str | None] | None:
    """(cache key, verified-at) stamped on the claim by a completed fetch, if any."""
    annotations = _meta(claim).get("annotations") or {}
    key = annotations.get(VERIFIED_KEY_ANNOTATION)
    return (key, annotations.get(VERIFIED_AT_ANNOTATION)) if key else None


def stamp_for(job: dict[str, Any], key: str) -> dict[str, str]:
    """The annotations that record a completed fetch Job's proof on the claim."""
    done = (job.get("status") or {}).get("completionTime") or _meta(job).get("creationTimestamp")
    return {VERIFIED_KEY_ANNOTATION: key, VERIFIED_AT_ANNOTATION: done or ""}


def job_ran_on_claim(job: dict[str, Any] | None, claim: dict[str, Any] | None) -> bool:
    """Whether the Job was made for this claim, not for one deleted since (same name, new uid)."""
    job_created = _time(_meta(job).get("creationTimestamp"))
    claim_created = _time(_meta(claim).get("creationTimestamp"))
    return bool(job_created and claim_created and job_created >= claim_created)


def refutation(pods: list[dict[str, Any]]) -> Refutation | None:
    """The latest 'cache not verified' termination among the runtime pods' containers."""
    found: Refutation | None = None
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                terminated = state.get("terminated") or {}
                lines = (terminated.get("message") or "").strip().splitlines()
                line = next((x for x in lines if x.startswith(CACHE_NOT_VERIFIED_MARK)), None)
                at = terminated.get("finishedAt") or ""
                if line and (found is None or at > found.at):
                    found = Refutation(_meta(pod).get("name", ""), line, at)
    return found


def proof_time(
    key: str, claim: dict[str, Any] | None, job: dict[str, Any] | None
) -> datetime | None:
    """When the cache for `key` was last proven on this claim: a stamp or a completed Job."""
    times = []
    stamp = claim_stamp(claim)
    if stamp and stamp[0] == key and _time(stamp[1]):
        times.append(_time(stamp[1]))
    if job_complete(job) and job_ran_on_claim(job, claim):
        times.append(_time(_meta(job).get("creationTimestamp")))
    return max(times) if times else None


def refuted_since_proof(refuted: Refutation | None, proven_at: datetime | None) -> bool:
    """A refutation counts when it came after the last proof (a fetch since then answers it)."""
    if refuted is None:
        return False
    said = _time(refuted.at)
    return proven_at is None or said is None or said > proven_at


def proven(
    key: str,
    claim: dict[str, Any] | None,
    job: dict[str, Any] | None,
    remembered_key: str | None,
    deployment: dict[str, Any] | None,
) -> bool:
    """Whether the claim holds the verified file for `key`, before any refutation.

    An operator from before the stamp remembered the key in the status only: that memory is
    trusted for a claim older than the Deployment that serves it (a re-created claim is newer).
    """
    if claim is None:
        return False
    stamp = claim_stamp(claim)
    if stamp and stamp[0] == key:
        return True
    if job_complete(job) and job_ran_on_claim(job, claim):
        return True
    return (
        stamp is None
        and remembered_key == key
        and deployment is not None
        and job_ran_on_claim(deployment, claim)
    )


def fetch_jobs_to_delete(
    jobs: list[dict[str, Any]],
    current_name: str | None,
    claim: dict[str, Any] | None,
    cached: bool,
    refuted: bool,
) -> list[dict[str, Any]]:
    """Fetch Jobs whose work is unwanted: superseded ones still running or failed, and the current
    one when its result is not on this claim or was refuted since (its name must be free again).

    A superseded Job that completed is left to its TTL, so its log can still be read, unless
    the claim is being deleted: Kubernetes keeps a claim until every pod that names it is gone,
    finished pods included (kubernetes/kubernetes#120756), so every fetch Job goes with it.
    """
    if _meta(claim).get("deletionTimestamp"):
        return list(jobs)
    doomed = []
    for job in jobs:
        if _meta(job).get("name") != current_name:
            if not job_complete(job):
                doomed.append(job)
            continue
        if cached or not job_complete(job):
            continue
        if not job_ran_on_claim(job, claim) or refuted:
            doomed.append(job)
    return doomed


def stamp_wanted(
    key: str,
    claim: dict[str, Any] | None,
    job: dict[str, Any] | None,
    deployment: dict[str, Any] | None,
    cached: bool,
) -> dict[str, str] | None:
    """The annotations to write on the claim now that the cache is proven, or None if written.

    A completed Job's proof is stamped with its completion time; a key remembered from before
    the stamp existed is stamped with the Deployment's creation (later refutations count).
    """
    if not cached or claim is None:
        return None
    if job_complete(job) and job_ran_on_claim(job, claim):
        assert job is not None
        want = stamp_for(job, key)
    elif claim_stamp(claim) is None:
        want = {
            VERIFIED_KEY_ANNOTATION: key,
            VERIFIED_AT_ANNOTATION: _meta(deployment).get("creationTimestamp") or "",
        }
    else:
        return None
    have = claim_stamp(claim)
    return None if have == (want[VERIFIED_KEY_ANNOTATION], want[VERIFIED_AT_ANNOTATION]) else want
