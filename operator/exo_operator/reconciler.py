"""Brings one ExoModel's children and status in line with its spec, from the indexes' snapshot.

Idempotent: it reads what the watches hold, applies only what differs, and writes status only
when it changed, so an idle cluster sees no writes.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from exo_operator import kube
from exo_operator.cache_proof import (
    fetch_jobs_to_delete,
    job_failed,
    proof_time,
    refutation,
    refuted_since_proof,
    stamp_wanted,
)
from exo_operator.children.fetch_job import fetch_job_for
from exo_operator.event_posts import EventPoster
from exo_operator.metrics import METRICS, OperatorMetrics
from exo_operator.model import ExoModel
from exo_operator.naming import (
    COMPONENT_LABEL,
    FETCH,
    MODEL_LABEL,
    RUNTIME,
    WORKER,
    cache_claim_name,
)
from exo_operator.plan import (
    ChildKey,
    Desired,
    applied_hash,
    child_key,
    desired_children,
    needs_apply,
    obsolete_children,
)
from exo_operator.ready_logs import ReadyLogs
from exo_operator.settings import OperatorSettings
from exo_operator.source_plan import source_plan
from exo_operator.status import (
    Observed,
    Transition,
    aggregate,
    is_cached,
    model_bytes,
    status_changed,
)
from exo_operator.volume_events import VolumeEvents

ModelKey = tuple[str, str]  # (namespace, name)
log = logging.getLogger(__name__)

# Statuses worth retrying: conflicts, throttling and the apiserver's own troubles.
RETRYABLE_STATUS = {409, 429, 500, 502, 503, 504}


@dataclass
class Snapshot:
    """What the watches hold for one ExoModel (kopf indexes, looked up by (namespace, model))."""

    body: dict[str, Any] | None
    pods: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    budgets: list[dict[str, Any]] = field(default_factory=list)
    statefulsets: list[dict[str, Any]] = field(default_factory=list)


def _by_name(objects: Iterable[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((o for o in objects if o["metadata"]["name"] == name), None)


def _component(obj: dict[str, Any]) -> str | None:
    return (obj["metadata"].get("labels") or {}).get(COMPONENT_LABEL)


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def is_ours(kind: str, obj: dict[str, Any], model: ExoModel) -> bool:
    """Whether the model may apply to this object: it owns it, or it is the model's own cache
    claim kept by storage.retainOnDelete (no owner; the operator's labels name the model)."""
    meta = obj["metadata"]
    if _owned_by(obj, model.uid):
        return True
    labels = meta.get("labels") or {}
    return (
        kind == "PersistentVolumeClaim"
        and not meta.get("ownerReferences")
        and labels.get(MODEL_LABEL) == model.name
        and labels.get("app.kubernetes.io/managed-by") == "exo-operator"
    )


def _owned_named(objects: Iterable[dict[str, Any]], uid: str, name: str) -> dict[str, Any] | None:
    """The object of that name owned by the model of that uid: a namesake of someone else's
    proves nothing."""
    return _by_name((o for o in objects if _owned_by(o, uid)), name)


def _fetch_jobs(jobs: Iterable[dict[str, Any]], uid: str) -> list[dict[str, Any]]:
    """The model's fetch Jobs, of any spec, current or superseded."""
    return [j for j in jobs if _owned_by(j, uid) and _component(j) == FETCH]


def _cache_claim(claims: Iterable[dict[str, Any]], model: ExoModel) -> dict[str, Any] | None:
    """The model's cache claim, if the model may use it: a claim not ours proves nothing (and
    the apply reports the conflict)."""
    claim = _by_name(claims, cache_claim_name(model))
    return claim if claim and is_ours("PersistentVolumeClaim", claim, model) else None


# Children that run pods on the others: never applied while a sibling is someone else's
# (a fetch into a user's claim would write, and prune, their data).
WORKLOADS = {"Job", "Deployment", "StatefulSet"}


@dataclass(frozen=True)
class Reading:
    """What one reconcile read before it acts: the model, its status as last written, and its
    children as the watches hold them."""

    key: ModelKey
    snap: Snapshot
    body: dict[str, Any]
    model: ExoModel
    previous: dict[str, Any]
    # The model's cache claim, when it may use it (see _cache_claim).
    claim: dict[str, Any] | None
    # The name of the fetch Job the spec wants, if it wants one.
    fetch_name: str | None


def _desired_children(
    reading: Reading, settings: OperatorSettings, obs: Observed, cached: bool
) -> Desired:
    """The children the spec wants now, tied to the cache claim that holds the model."""
    claim = reading.claim
    fetched = source_plan(reading.model).fetched
    claim_uid = claim["metadata"]["uid"] if claim and fetched else None
    going = bool(claim and claim["metadata"].get("deletionTimestamp"))
    return desired_children(
        reading.model, settings, cached, model_bytes(obs), claim_uid, cache_claim_going=going
    )


def _observed_children(
    snap: Snapshot, jobs: list[dict[str, Any]]
) -> dict[ChildKey, dict[str, Any]]:
    """The children the watches hold, by the plan's keys (the indexes keep bodies without
    their kind, which those keys need)."""
    return {
        child_key(o): o
        for o in (
            {"kind": kind, **obj}
            for kind, objects in (
                ("Service", snap.services),
                ("PersistentVolumeClaim", snap.claims),
                ("Deployment", snap.deployments),
                ("Job", jobs),
                ("PodDisruptionBudget", snap.budgets),
                ("StatefulSet", snap.statefulsets),
            )
            for obj in objects
        )
        if o["metadata"].get("namespace")
    }


@dataclass
class ApplyOutcome:
    error: str | None = None
    retryable: bool = False
    conflicts: list[str] = field(default_factory=list)


class Reconciler:
    """Serializes reconciles per ExoModel and runs different ExoModels concurrently."""

    def __init__(
        self,
        settings: OperatorSettings,
        snapshot: Callable[[ModelKey], Snapshot],
        metrics: OperatorMetrics = METRICS,
    ):
        self.settings = settings
        self.snapshot = snapshot
        self.metrics = metrics
        self._locks: dict[ModelKey, asyncio.Lock] = {}
        self._waiting: set[ModelKey] = set()
        self._applied: dict[ChildKey, tuple[str, str | None]] = {}
        self._written: dict[ModelKey, dict[str, Any]] = {}
        self.fetch_tails: dict[ModelKey, str] = {}
        # Jobs this operator deleted, by uid, until the watch shows them gone.
        self._deleted_jobs: dict[ModelKey, set[str]] = {}
        self.ready_logs = ReadyLogs(self.reconcile)
        self.volume_events = VolumeEvents(self.reconcile)
        self.events = EventPoster()
        # Status writes get threads of their own: a pod turning Ready is reported at once,
        # not after the child applies that hundreds of other models have queued.
        self._status_pool = ThreadPoolExecutor(
            max(2, settings.api_workers // 2), thread_name_prefix="exo-status"
        )

    def forget(self, key: ModelKey) -> None:
        """Drops what is remembered of a deleted ExoModel."""
        self._locks.pop(key, None)
        self._written.pop(key, None)
        self.fetch_tails.pop(key, None)
        self._deleted_jobs.pop(key, None)
        self.ready_logs.forget(key)
        self.volume_events.forget(key)
        self.metrics.forget_model(key)
        namespace, name = key
        self._applied = {
            ck: seen
            for ck, seen in self._applied.items()
            if not (ck[1] == namespace and (ck[2] == name or ck[2].startswith(f"{name}-")))
        }

    async def reconcile(self, key: ModelKey, *, coalesce: bool = True) -> None:
        """Reconciles one ExoModel; with coalesce, a call finding one already queued is dropped."""
        if coalesce and key in self._waiting:
            return  # the queued run reads the indexes after this event too
        self._waiting.add(key)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            self._waiting.discard(key)
            started = time.perf_counter()
            try:
                await self._reconcile_once(key)
            finally:
                self.metrics.reconciled(time.perf_counter() - started)

    async def _reconcile_once(self, key: ModelKey) -> None:
        """One pass: read, retire unwanted fetch Jobs, stamp a proven cache, apply the plan,
        delete what it dropped, and report the status."""
        reading = self._read(key)
        if reading is None:
            self.metrics.forget_model(key)  # gone or going: counted in no phase
            return
        self._forget_jobs_gone(key, reading.snap.jobs)
        jobs = self._jobs_not_deleted(key, reading.snap.jobs)
        base = self._observe(reading, jobs)
        if await self._delete_unwanted_fetch_jobs(reading, jobs, base):
            jobs = self._jobs_not_deleted(key, jobs)
            base = self._observe(reading, jobs)
        cached = is_cached(base)
        await self._stamp_proven_cache(reading, base, cached)

        desired = _desired_children(reading, self.settings, base, cached)
        observed = _observed_children(reading.snap, jobs)
        outcome = await self._apply_all(reading.model, desired.manifests, observed)
        await self._delete_obsolete(reading.model, desired, observed)

        status, transitions = aggregate(
            replace(
                base,
                template_hash=desired.template_hash,
                apply_error=outcome.error,
                apply_retrying=outcome.retryable,
                name_conflicts=tuple(outcome.conflicts),
            )
        )
        if not await self._report(reading, status, transitions):
            return  # deleted meanwhile: nothing left to report on or retry
        if outcome.error and outcome.retryable:
            raise kopf.TemporaryError(outcome.error, delay=5)

    def _read(self, key: ModelKey) -> Reading | None:
        """The model, its last status and its children as the watches hold them; None when the
        model is gone or going."""
        snap = self.snapshot(key)
        body = snap.body
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        model = ExoModel.from_body(body)
        desired_fetch = fetch_job_for(model, self.settings)
        return Reading(
            key=key,
            snap=snap,
            body=body,
            model=model,
            previous=self._previous_status(key, body, model),
            claim=_cache_claim(snap.claims, model),
            fetch_name=desired_fetch["metadata"]["name"] if desired_fetch else None,
        )

    def _previous_status(
        self, key: ModelKey, body: dict[str, Any], model: ExoModel
    ) -> dict[str, Any]:
        """The status as last written: the body's, with this operator's last write on top."""
        previous = dict(body.get("status") or {})
        if (
            key in self._written
            and self._written[key].get("observedGeneration") == model.generation
        ):
            # The watch may not have shown our last status write yet.
            previous = {**previous, **self._written[key]}
        return previous

    def _forget_jobs_gone(self, key: ModelKey, jobs: list[dict[str, Any]]) -> None:
        """Forgets the Jobs this operator deleted that the watch no longer shows."""
        gone = self._deleted_jobs.setdefault(key, set())
        gone &= {j["metadata"]["uid"] for j in jobs}  # deleted for good: forget

    def _jobs_not_deleted(self, key: ModelKey, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The Jobs less those this operator deleted, which the watch may still show a while."""
        gone = self._deleted_jobs.get(key, set())
        return [j for j in jobs if j["metadata"]["uid"] not in gone]

    async def _delete_unwanted_fetch_jobs(
        self, reading: Reading, jobs: list[dict[str, Any]], obs: Observed
    ) -> bool:
        """Deletes the model's fetch Jobs that are superseded or do not prove the cache, so
        that the apply makes the current one anew. Returns whether it deleted any."""
        doomed = fetch_jobs_to_delete(
            _fetch_jobs(jobs, reading.model.uid),
            reading.fetch_name,
            reading.claim,
            is_cached(obs),
            self._refuted(obs, reading.key),
        )
        if doomed:
            await self._delete_jobs(reading.key, doomed)
        return bool(doomed)

    async def _stamp_proven_cache(self, reading: Reading, obs: Observed, cached: bool) -> None:
        """Records on the cache claim when the model in it was proven, once, so that a later
        refutation by a runtime pod can be told from an old one."""
        key = source_plan(reading.model).cache_key
        if not key or not reading.claim:
            return
        stamp = stamp_wanted(key, reading.claim, obs.fetch_job, obs.deployment, cached)
        if stamp:
            await self._stamp_claim(reading.claim, stamp)

    async def _delete_obsolete(
        self, model: ExoModel, desired: Desired, observed: dict[ChildKey, dict[str, Any]]
    ) -> None:
        """Deletes the children the plan no longer holds; one that fails is tried next time."""
        for kind, namespace, name in obsolete_children(model, desired, observed.values()):
            try:
                await asyncio.to_thread(kube.delete, kind, namespace, name)
            except (ApiException, HTTPError, OSError) as error:
                self.metrics.api_error("delete")
                log.warning("%s %s/%s not deleted yet: %s", kind, namespace, name, error)

    async def _report(
        self, reading: Reading, status: dict[str, Any], transitions: list[Transition]
    ) -> bool:
        """Writes the status if it changed, then posts its Events, so that an idle cluster sees
        no writes. Returns False when the model was deleted meanwhile."""
        key, model = reading.key, reading.model
        self.metrics.model_phase(key, status["phase"])
        if not status_changed(reading.previous, status):
            return True
        try:
            await _call(
                kube.patch_status, model.namespace, model.name, status, pool=self._status_pool
            )
        except ApiException as error:
            self.metrics.api_error("status")
            if error.status == 404:
                self.metrics.forget_model(key)
                return False
            raise
        except kopf.TemporaryError:
            self.metrics.api_error("status")  # _call's wrapping of a 5xx or lost connection
            raise
        self.metrics.status_written()
        self._written[key] = status
        self.events.post(reading.body, transitions)
        return True

    def _observe(self, reading: Reading, jobs: list[dict[str, Any]]) -> Observed:
        """What the indexes show of the model's children, as status aggregation reads it."""
        key, model, snap = reading.key, reading.model, reading.snap
        pods = snap.pods  # owned by ReplicaSets and Jobs: the index finds them by label
        fetch_job = (
            _owned_named(jobs, model.uid, reading.fetch_name) if reading.fetch_name else None
        )
        # By the Job's uid: a retried Job reuses its name while the old one's pods linger.
        fetch_pods = [
            p
            for p in pods
            if _component(p) == FETCH and fetch_job and _owned_by(p, fetch_job["metadata"]["uid"])
        ]
        runtime_pods = [p for p in pods if _component(p) == RUNTIME]
        return Observed(
            model=model,
            previous=reading.previous,
            runtime_port=self.settings.runtime_port,
            claim=reading.claim,
            fetch_job=fetch_job,
            fetch_pods=fetch_pods,
            deployment=_owned_named(snap.deployments, model.uid, model.name),
            runtime_pods=runtime_pods,
            worker_pods=[p for p in pods if _component(p) == WORKER],
            fetch_log_tail=self.fetch_tails.get(key),
            ready_events=self.ready_logs.events(key, runtime_pods),
            volume_problems=self.volume_events.problems(key, [*fetch_pods, *runtime_pods]),
        )

    @staticmethod
    def _refuted(obs: Observed, key: ModelKey) -> bool:
        """Whether a runtime pod found the cache unverified since it was last proven."""
        cache = source_plan(obs.model).cache_key
        if cache is None:
            return False
        return refuted_since_proof(
            refutation(obs.runtime_pods), proof_time(cache, obs.claim, obs.fetch_job)
        )

    async def _delete_jobs(self, key: ModelKey, jobs: list[dict[str, Any]]) -> None:
        """Deletes fetch Jobs whose work is unwanted; the next apply makes the current one anew."""
        for job in jobs:
            meta = job["metadata"]
            await _call(kube.delete_job, meta["namespace"], meta["name"], meta["uid"])
            self.metrics.child_deleted("Job")
            log.info(
                "deleted fetch Job %s/%s: superseded or not proving the cache",
                *key[:1],
                meta["name"],
            )
            self._deleted_jobs.setdefault(key, set()).add(meta["uid"])
            self._applied.pop(("Job", meta["namespace"], meta["name"]), None)

    async def _stamp_claim(self, claim: dict[str, Any], stamp: dict[str, str]) -> None:
        meta = claim["metadata"]
        await _call(
            kube.annotate,
            "PersistentVolumeClaim",
            meta["namespace"],
            meta["name"],
            stamp,
            self.settings.field_manager,
            pool=self._status_pool,  # like a status write: the model's own, not a child apply
        )

    async def retry_fetch_if_secret_changed(self, key: ModelKey, secret: str) -> bool:
        """Deletes the model's failed fetch Job when `secret` changed after it was made, so that a
        new try starts now rather than after the Job's TTL. Returns whether it did."""
        snap = self.snapshot(key)
        if snap.body is None:
            return False
        model = ExoModel.from_body(snap.body)
        desired = fetch_job_for(model, self.settings)
        jobs = self._jobs_not_deleted(key, snap.jobs)
        job = _owned_named(jobs, model.uid, desired["metadata"]["name"]) if desired else None
        if not job or not job_failed(job):
            return False
        changed = await _call(kube.secret_changed_at, model.namespace, secret)
        created = _parse_time(job["metadata"].get("creationTimestamp"))
        # Both times are whole seconds: a Secret written in the Job's own second predates it
        # (the usual order, Secret first, then the model), so only a later second is a fix.
        if changed is None or created is None or changed <= created:
            return False
        log.info(
            "Secret %s/%s changed since fetch Job %s failed: fetching again",
            model.namespace,
            secret,
            job["metadata"]["name"],
        )
        await self._delete_jobs(key, [job])
        await self.reconcile(key)
        return True

    async def _apply_all(
        self,
        model: ExoModel,
        manifests: list[dict[str, Any]],
        observed: dict[ChildKey, dict[str, Any]],
    ) -> ApplyOutcome:
        """Applies what differs, each child even when another fails; never one it does not own.

        A child missing from the indexes (which see only labelled children) is read first: a
        user's object of that name is reported as a conflict and left untouched. Only a child
        about to be created costs that read, so a steady state costs nothing.
        Errors come in the apiserver's words, with whether a retry may help (5xx, throttling,
        a lost connection) or not (a refused manifest: the user must act).
        """
        outcome = ApplyOutcome()
        errors: list[str] = []
        for manifest in manifests:
            ck = child_key(manifest)
            kind, _, name = ck
            if outcome.conflicts and kind in WORKLOADS:
                continue
            seen = observed.get(ck)
            if seen is not None and not is_ours(kind, seen, model):
                outcome.conflicts.append(f"{kind} {name}")
                continue
            if seen is not None and applied_hash(seen) == applied_hash(manifest):
                # The watch shows our last write: forget it, so that a child deleted later (a
                # cache claim removed by hand) is seen as missing and made again.
                self._applied.pop(ck, None)
            if not needs_apply(manifest, seen, self._applied.get(ck)):
                continue
            try:
                if seen is None:
                    found = await asyncio.to_thread(kube.read, kind, ck[1], name)
                    if found is not None and not is_ours(kind, found, model):
                        outcome.conflicts.append(f"{kind} {name}")
                        continue
                await asyncio.to_thread(kube.apply, manifest, self.settings.field_manager)
            except ApiException as error:
                self.metrics.api_error("apply")
                errors.append(f"{kind} {name} was refused: {kube.describe_api_error(error)}")
                outcome.retryable = outcome.retryable or error.status in RETRYABLE_STATUS
                continue
            except (HTTPError, OSError) as error:
                self.metrics.api_error("apply")
                errors.append(f"{kind} {name} could not be applied: {error}")
                outcome.retryable = True
                continue
            self.metrics.child_applied(manifest["kind"])
            version = (seen or {}).get("metadata", {}).get("resourceVersion")
            self._applied[ck] = (
                manifest["metadata"]["annotations"]["exo.dev/applied-hash"],
                version,
            )
        outcome.error = "; ".join(errors) or None
        return outcome


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


async def _call(fn: Callable[..., Any], *args: Any, pool: Executor | None = None) -> Any:
    """Runs a blocking API call in a thread; transient failures become kopf.TemporaryError."""
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    except ApiException as error:
        if error.status in RETRYABLE_STATUS:
            raise kopf.TemporaryError(
                f"apiserver said {error.status}: {error.reason}", delay=2
            ) from error
        raise
    except (HTTPError, OSError) as error:
        raise kopf.TemporaryError(f"apiserver unreachable: {error}", delay=2) from error
