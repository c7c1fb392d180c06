"""Operator lifecycle: settings, credentials, the background loops, and the liveness probe."""

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from exo_operator import heap, kube
from exo_operator.handlers.indexes import select_children_server_side
from exo_operator.naming import COMPONENT_LABEL, FETCH
from exo_operator.reconciler import Reconciler, Snapshot
from exo_operator.settings import OperatorSettings

log = logging.getLogger(__name__)
# How `exo-runtime fetch` names a refused download (401/403) in the FetchFailed message.
AUTH_FAILURE = "Unauthorized"
# A user who fixed the token expects the next try within seconds.
SECRET_CHECK_SECONDS = 3.0


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    exomodels: kopf.Index,
    model_pods: kopf.Index,
    model_jobs: kopf.Index,
    model_deployments: kopf.Index,
    model_claims: kopf.Index,
    model_services: kopf.Index,
    model_budgets: kopf.Index,
    model_statefulsets: kopf.Index,
    **_: Any,
) -> None:
    # Keep kopf's bookkeeping in annotations of our own prefix, not in the status we own.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="exo.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="exo.dev", key="last-handled-configuration"
    )
    # Events only for the transitions we post ourselves, not for every handler's log line.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    select_children_server_side(settings)
    # kopf waits this long for more events of one object before handling them; status should
    # follow a pod's readiness quickly.
    settings.batching.batch_window = 0.02
    operator_settings = OperatorSettings()
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(operator_settings.api_workers, thread_name_prefix="exo-api")
    )
    # Connections for both the apply and the status threads (see Reconciler).
    await asyncio.to_thread(kube.load_credentials, 2 * operator_settings.api_workers)

    def snapshot(key: tuple[str, str]) -> Snapshot:
        def values(index: kopf.Index) -> list[dict[str, Any]]:
            return list(index.get(key, []))

        bodies = values(exomodels)
        return Snapshot(
            body=bodies[0] if bodies else None,
            pods=values(model_pods),
            jobs=values(model_jobs),
            deployments=values(model_deployments),
            claims=values(model_claims),
            services=values(model_services),
            budgets=values(model_budgets),
            statefulsets=values(model_statefulsets),
        )

    memo.settings = operator_settings
    memo.ready = asyncio.Event()
    memo.reconciler = Reconciler(operator_settings, snapshot)
    memo.loops = [
        asyncio.create_task(_follow_downloads(memo, exomodels, model_pods)),
        asyncio.create_task(_resync(memo, exomodels)),
        asyncio.create_task(_watch_fetch_secrets(memo, exomodels)),
        asyncio.create_task(_trim_heap(memo.settings.resync_seconds)),
    ]


@kopf.on.cleanup()
async def stop_loops(memo: kopf.Memo, **_: Any) -> None:
    for task in getattr(memo, "loops", []):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@kopf.on.probe(id="models")
def models_known(exomodels: kopf.Index, **_: Any) -> int:
    """Liveness: the operator answers, and says how many ExoModels it watches."""
    return len(exomodels)


def _running_fetch_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        if (
            labels.get(COMPONENT_LABEL) == FETCH
            and (pod.get("status") or {}).get("phase") == "Running"
        ):
            return pod
    return None


async def _follow_downloads(memo: kopf.Memo, exomodels: kopf.Index, model_pods: kopf.Index) -> None:
    """Copies the running fetch pods' progress lines into their models' status."""
    await memo.ready.wait()  # kopf calls handlers only once every index is filled
    reconciler: Reconciler = memo.reconciler
    while True:
        await asyncio.sleep(memo.settings.progress_interval_seconds)
        for key, store in list(exomodels.items()):
            for body in store:
                if (body.get("status") or {}).get("phase") != "Downloading":
                    continue
                pod = _running_fetch_pod(list(model_pods.get(key, [])))
                if not pod:
                    continue
                tail = await asyncio.to_thread(kube.log_tail, key[0], pod["metadata"]["name"])
                if tail and tail != reconciler.fetch_tails.get(key):
                    reconciler.fetch_tails[key] = tail
                    await _quietly(reconciler, key)


def _unauthorized_fetch_secret(body: dict[str, Any]) -> str | None:
    """The token Secret of a model whose fetch failed for lack of access, else None."""
    status = body.get("status") or {}
    if status.get("phase") != "Failed":
        return None
    cached = next((c for c in status.get("conditions") or [] if c.get("type") == "ModelCached"), {})
    if cached.get("reason") != "FetchFailed" or not str(cached.get("message", "")).startswith(
        AUTH_FAILURE
    ):
        return None
    hf = ((body.get("spec") or {}).get("source") or {}).get("huggingFace") or {}
    return (hf.get("tokenSecretRef") or {}).get("name")


async def _watch_fetch_secrets(memo: kopf.Memo, exomodels: kopf.Index) -> None:
    """Retries a fetch that failed for lack of access as soon as its token Secret changes.

    Only models in that state cost anything: one read of their Secret every few seconds. A
    watch on Secrets would hold every Secret of the cluster in the operator's memory.
    """
    await memo.ready.wait()
    reconciler: Reconciler = memo.reconciler
    while True:
        await asyncio.sleep(SECRET_CHECK_SECONDS)
        for key, store in list(exomodels.items()):
            for body in store:
                secret = _unauthorized_fetch_secret(body)
                if not secret:
                    continue
                try:
                    await reconciler.retry_fetch_if_secret_changed(key, secret)
                except Exception as error:  # one model's trouble never stops the others
                    log.warning("token Secret of %s/%s not checked: %s", *key, error)


async def _resync(memo: kopf.Memo, exomodels: kopf.Index) -> None:
    """Reconciles every model once a resync period, one at a time, spread evenly over it.

    A reconcile that changes nothing writes nothing and never waits, so a pass over every model
    at once held the event loop for its whole length (a few milliseconds a model: seconds at
    thousands) while pod events queued behind it. Spread out, it costs the same and holds any
    event up by one reconcile at most.
    """
    await memo.ready.wait()
    period = memo.settings.resync_seconds
    while True:
        keys = list(exomodels.keys())
        if not keys:
            await asyncio.sleep(period)
        for key in keys:
            await asyncio.sleep(period / len(keys))
            await _quietly(memo.reconciler, key)


async def _trim_heap(period: float) -> None:
    """Returns freed memory to the system once a period (see heap.py), off the event loop."""
    while True:
        await asyncio.sleep(period)
        if not await asyncio.get_running_loop().run_in_executor(None, heap.trim):
            return


async def _quietly(reconciler: Reconciler, key: tuple[str, str]) -> None:
    try:
        await reconciler.reconcile(key)
    except Exception as error:  # one model's failure never stops the loop for the others
        log.warning("reconcile of %s/%s failed, retrying at the next resync: %s", *key, error)
