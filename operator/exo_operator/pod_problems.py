"""Pure reading of one pod: whether it serves, and why it does not run its container.

Status aggregation, the volume Events reader and the ready-line reader all ask these; none of
them needs the rest of the status to do it.
"""

from dataclasses import dataclass
from typing import Any

from exo_operator.cache_proof import CACHE_NOT_VERIFIED_MARK

# Container problems a user must act on, as the kubelet names them in `state.waiting.reason`.
WAITING_PROBLEMS = {
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
}

LOAD_FAILED_MARK = "load failed"
# The head's load failures that concern one worker, as `exo-runtime serve` words them in its
# termination message ("exo-runtime: load failed: rpc worker unreachable: HOST:PORT"), each
# with its reason; the line names the worker.
WORKER_FAILURES = {
    "rpc worker unreachable": "WorkerUnreachable",
    "rpc worker version mismatch": "WorkerVersionMismatch",
    # Not a load failure: a worker of a serving head went away, and the head exited to load
    # onto it again once it is back ("exo-runtime: rpc worker lost: HOST:PORT (...)").
    "rpc worker lost": "WorkerLost",
}


@dataclass(frozen=True)
class Finding:
    """Why a step is where it is: a condition's reason and message."""

    reason: str
    message: str


def is_terminating(obj: dict[str, Any]) -> bool:
    """Whether the object is being deleted: it counts no more, whatever its state."""
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def pod_condition(pod: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The pod's condition of that type (Ready, PodScheduled), whatever its status."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def pod_is_ready(pod: dict[str, Any]) -> bool:
    """Whether the pod serves: Ready (after warmup, for a runtime pod) and not going."""
    cond = pod_condition(pod, "Ready")
    return bool(cond and cond.get("status") == "True") and not is_terminating(pod)


def containers_creating(pod: dict[str, Any]) -> bool:
    """Whether the pod is on a node and its containers wait to be created (volumes, image)."""
    status = pod.get("status") or {}
    scheduled = pod_condition(pod, "PodScheduled")
    if status.get("phase") != "Pending" or not scheduled or scheduled.get("status") != "True":
        return False
    waiting = [
        ((cs.get("state") or {}).get("waiting") or {}).get("reason")
        for cs in [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]
    ]
    return all(reason in (None, "ContainerCreating", "PodInitializing") for reason in waiting)


def pod_problem(pod: dict[str, Any], volume_problem: Finding | None = None) -> Finding | None:
    """Why a pod is not running its container, or None when it is (or is on its way).

    `volume_problem` is what the pod's Events say of its volumes, if they were read.
    """
    scheduled = pod_condition(pod, "PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        return Finding("Unschedulable", scheduled.get("message") or "the scheduler found no node")
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        terminated = state.get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
        message = (terminated.get("message") or "").strip()
        unverified = [x for x in message.splitlines() if x.startswith(CACHE_NOT_VERIFIED_MARK)]
        if unverified:
            return Finding("CacheNotVerified", unverified[-1])
        worker_failure = _worker_failure(message)
        if worker_failure:
            return worker_failure
        if LOAD_FAILED_MARK in message:
            return Finding("LoadFailed", message.splitlines()[-1])
        if terminated.get("reason") == "OOMKilled":
            return Finding(
                "OOMKilled",
                f"container {cs.get('name')} ran out of memory; raise spec.resources.memory",
            )
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in WAITING_PROBLEMS:
            detail = waiting.get("message") or message or f"exit code {terminated.get('exitCode')}"
            return Finding(waiting["reason"], detail)
    if status.get("phase") == "Failed":
        return Finding("PodFailed", status.get("message") or status.get("reason") or "pod failed")
    if volume_problem and containers_creating(pod):
        return volume_problem
    return None


def _worker_failure(message: str) -> Finding | None:
    """WorkerUnreachable, WorkerVersionMismatch or WorkerLost from the head's termination
    message."""
    for line in reversed(message.splitlines()):
        for mark, reason in WORKER_FAILURES.items():
            if mark in line:
                return Finding(reason, line.strip())
    return None
