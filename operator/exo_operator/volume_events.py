"""Why a pod waits in ContainerCreating: its volume Events (attach, mount), read only when stuck.

The kubelet and the attach/detach controller say what is wrong with a volume only in Events on
the pod (`FailedAttachVolume`, with Multi-Attach among them, and `FailedMount`); the pod itself
just waits in ContainerCreating. A pod waiting longer than a few seconds gets its Warning Events
read (one field-selected list), then again every few seconds while it still waits; a pod that
starts costs nothing. Reads run on threads of their own and reconcile the model when done.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from exo_operator import kube
from exo_operator.pod_problems import Finding, containers_creating

ModelKey = tuple[str, str]  # (namespace, name)
log = logging.getLogger(__name__)

VOLUME_REASONS = ("FailedAttachVolume", "FailedMount")
# A volume attaches and mounts in a second or two when all is well.
STUCK_AFTER_SECONDS = 5.0
REREAD_SECONDS = 10.0


def _event_time(event: dict[str, Any]) -> str:
    return (
        event.get("lastTimestamp")
        or (event.get("series") or {}).get("lastObservedTime")
        or event.get("eventTime")
        or event.get("firstTimestamp")
        or ""
    )


def volume_finding(events: list[dict[str, Any]]) -> Finding | None:
    """The latest volume Warning among a pod's Events, in the words of whoever reported it."""
    volume = [e for e in events if e.get("reason") in VOLUME_REASONS]
    if not volume:
        return None
    latest = max(volume, key=_event_time)
    return Finding(latest["reason"], (latest.get("message") or latest["reason"]).strip())


def waiting_since(pod: dict[str, Any]) -> datetime | None:
    """When the pod was placed on its node (it has waited for its containers since), if it is."""
    if not containers_creating(pod):
        return None
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("lastTransitionTime"):
            return datetime.fromisoformat(cond["lastTransitionTime"].replace("Z", "+00:00"))
    return None


class VolumeEvents:
    """Remembers, per model and pod, what the pod's volume Events said (None: nothing)."""

    def __init__(
        self,
        on_read: Callable[[ModelKey], Awaitable[None]],
        read_events: Callable[[str, str, str], list[dict[str, Any]]] = kube.pod_warnings,
        workers: int = 2,
        stuck_after: float = STUCK_AFTER_SECONDS,
        reread: float = REREAD_SECONDS,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._on_read = on_read
        self._read_events = read_events
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="exo-events")
        self._stuck_after = stuck_after
        self._reread = reread
        self._now = now
        self._found: dict[ModelKey, dict[str, Finding | None]] = {}
        self._last_read: dict[tuple[ModelKey, str], datetime] = {}
        self._reads: dict[tuple[ModelKey, str], asyncio.Task] = {}

    def problems(self, key: ModelKey, pods: list[dict[str, Any]]) -> dict[str, Finding]:
        """Volume findings by pod name; schedules a read for each pod waiting too long."""
        found = self._found.setdefault(key, {})
        waiting = {p["metadata"]["name"]: (p, waiting_since(p)) for p in pods}
        for name in [n for n in found if waiting.get(n, (None, None))[1] is None]:
            del found[name]  # started or gone: what its Events said no longer applies
            self._last_read.pop((key, name), None)
        for name, (pod, since) in waiting.items():
            if since is None or (key, name) in self._reads:
                continue
            due = since.timestamp() + self._stuck_after
            last = self._last_read.get((key, name))
            if last is not None:
                due = max(due, last.timestamp() + self._reread)
            delay = max(0.0, due - self._now().timestamp())
            task = asyncio.create_task(self._read(key, pod, delay))
            self._reads[(key, name)] = task
        return {name: finding for name, finding in found.items() if finding}

    def forget(self, key: ModelKey) -> None:
        """Drops what is remembered of a deleted model."""
        self._found.pop(key, None)
        for pair in [p for p in self._reads if p[0] == key]:
            self._reads.pop(pair).cancel()
        self._last_read = {p: t for p, t in self._last_read.items() if p[0] != key}

    async def _read(self, key: ModelKey, pod: dict[str, Any], delay: float) -> None:
        meta = pod["metadata"]
        name = meta["name"]
        try:
            await asyncio.sleep(delay)
            loop = asyncio.get_running_loop()
            try:
                events = await loop.run_in_executor(
                    self._pool, self._read_events, key[0], name, meta["uid"]
                )
            except (ApiException, HTTPError, OSError) as error:
                log.info("events of pod %s/%s not read: %s", key[0], name, error)
                events = []
            self._last_read[(key, name)] = self._now()
            if key in self._found:
                self._found[key][name] = volume_finding(events)
        finally:
            self._reads.pop((key, name), None)
        await self._on_read(key)  # re-derives the status and schedules the next read if stuck
