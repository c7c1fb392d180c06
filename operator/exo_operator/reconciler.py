"""Brings one ExoModel's children and status in line with its spec, from the indexes' snapshot.

Idempotent: it reads what the watches hold, applies only what differs, and writes status only
when it changed, so an idle cluster sees no writes.
"""

import asyncio
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from exo_operator import kube
from exo_operator.cache import cache_key
from exo_operator.metrics import METRICS, OperatorMetrics
from exo_operator.model import ExoModel
from exo_operator.naming import (
    COMPONENT_LABEL,
    FETCH,
    RUNTIME,
    cache_claim_name,
    fetch_job_name,
)
from exo_operator.plan import ChildKey, child_key, desired_children, needs_apply
from exo_operator.ready_logs import ReadyLogs
from exo_operator.settings import OperatorSettings
from exo_operator.status import (
    Observed,
    Transition,
    aggregate,
    is_cached,
    model_bytes,
    status_changed,
)

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


def _by_name(objects: Iterable[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((o for o in objects if o["metadata"]["name"] == name), None)


def _component(pod: dict[str, Any]) -> str | None:
    return (pod["metadata"].get("labels") or {}).get(COMPONENT_LABEL)


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


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
        self.ready_logs = ReadyLogs(self.reconcile)
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
        self.ready_logs.forget(key)
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
            await self._reconcile_once(key)

    async def _reconcile_once(self, key: ModelKey) -> None:
        snap = self.snapshot(key)
        if snap.body is None or snap.body["metadata"].get("deletionTimestamp"):
            self.metrics.forget_model(key)  # gone or going: counted in no phase
            return
        body = snap.body
        model = ExoModel.from_body(body)
        previous = dict(body.get("status") or {})
        if (
            key in self._written
            and self._written[key].get("observedGeneration") == model.generation
        ):
            # The watch may not have shown our last status write yet.
            previous = {**previous, **self._written[key]}
        uid = model.uid
        # Pods are owned by ReplicaSets and Jobs, so the index finds them by the model's label.
        pods = snap.pods
        jobs = [j for j in snap.jobs if _owned_by(j, uid)]
        fetch_job = None
        if not model.spec.source.pvc:
            fetch_job = _by_name(jobs, fetch_job_name(model, cache_key(model.spec.source)))
        fetch_pods = [
            p
            for p in pods
            if _component(p) == FETCH
            and fetch_job
            and (p["metadata"].get("labels") or {}).get("job-name") == fetch_job["metadata"]["name"]
        ]
        claim = _by_name(snap.claims, cache_claim_name(model))
        deployment = _by_name([d for d in snap.deployments if _owned_by(d, uid)], model.name)
        runtime_pods = [p for p in pods if _component(p) == RUNTIME]

        base = Observed(
            model=model,
            previous=previous,
            runtime_port=self.settings.runtime_port,
            claim=claim,
            fetch_job=fetch_job,
            fetch_pods=fetch_pods,
            deployment=deployment,
            runtime_pods=runtime_pods,
            fetch_log_tail=self.fetch_tails.get(key),
            ready_events=self.ready_logs.events(key, runtime_pods),
        )
        desired = desired_children(model, self.settings, is_cached(base), model_bytes(base))
        observed = {
            child_key(o): o
            for o in [*snap.services, *snap.claims, *snap.deployments, *jobs]
            if o["metadata"].get("namespace")
        }
        apply_error, retry = await self._apply_all(desired.manifests, observed)

        status, transitions = aggregate(
            replace(
                base,
                template_hash=desired.template_hash,
                apply_error=apply_error,
                apply_retrying=retry,
            )
        )
        self.metrics.model_phase(key, status["phase"])
        if status_changed(previous, status):
            try:
                await _call(
                    kube.patch_status, model.namespace, model.name, status, pool=self._status_pool
                )
            except ApiException as error:
                self.metrics.api_error("status")
                if error.status == 404:
                    self.metrics.forget_model(key)
                    return  # deleted meanwhile: nothing left to report on
                raise
            except kopf.TemporaryError:
                self.metrics.api_error("status")  # _call's wrapping of a 5xx or lost connection
                raise
            self.metrics.status_written()
            self._written[key] = status
            for t in transitions:
                await self._post_event(body, t)
        if apply_error and retry:
            raise kopf.TemporaryError(apply_error, delay=5)

    async def _post_event(self, body: dict[str, Any], transition: Transition) -> None:
        """Events are a courtesy: one that cannot be posted (a namespace going away) is skipped."""
        try:
            await asyncio.to_thread(
                kube.post_event, body, transition.type, transition.reason, transition.message
            )
        except (ApiException, HTTPError, OSError) as error:
            why = kube.describe_api_error(error) if isinstance(error, ApiException) else error
            name = body["metadata"]["name"]
            log.info("event %s on %s not posted: %s", transition.reason, name, why)

    async def _apply_all(
        self, manifests: list[dict[str, Any]], observed: dict[ChildKey, dict[str, Any]]
    ) -> tuple[str | None, bool]:
        """Applies what differs, each child even when another fails.

        Returns what failed, in the apiserver's words, and whether a retry may help (5xx,
        throttling, a lost connection) or not (a refused manifest: the user must act).
        """
        errors: list[str] = []
        retryable = False
        for manifest in manifests:
            ck = child_key(manifest)
            seen = observed.get(ck)
            if not needs_apply(manifest, seen, self._applied.get(ck)):
                continue
            try:
                await asyncio.to_thread(kube.apply, manifest, self.settings.field_manager)
            except ApiException as error:
                self.metrics.api_error("apply")
                errors.append(f"{ck[0]} {ck[2]} was refused: {kube.describe_api_error(error)}")
                retryable = retryable or error.status in RETRYABLE_STATUS
                continue
            except (HTTPError, OSError) as error:
                self.metrics.api_error("apply")
                errors.append(f"{ck[0]} {ck[2]} could not be applied: {error}")
                retryable = True
                continue
            self.metrics.child_applied(manifest["kind"])
            version = (seen or {}).get("metadata", {}).get("resourceVersion")
            self._applied[ck] = (
                manifest["metadata"]["annotations"]["exo.dev/applied-hash"],
                version,
            )
        return "; ".join(errors) or None, retryable


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
