"""The `ready` line of each Ready runtime pod, read from its log once, off the reconcile's path.

Reading a log never delays the status that says a pod is Ready, nor takes the threads that
apply children: reads run on threads of their own, and the model is reconciled again when one
finds a line. Each pod is read once: a log that cannot be read (kwok has no kubelet, and
answers 400 at once) is not asked for again.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from exo_operator import kube
from exo_operator.pod_problems import pod_is_ready
from exo_operator.runtime_events import SERVE_EVENTS, last_event

ModelKey = tuple[str, str]  # (namespace, name)
log = logging.getLogger(__name__)

# The runtime prints its ready line just before /readyz turns 200, so when the pod is first
# seen Ready the line is among the last few; this bounds what one read fetches.
TAIL_LINES = 50


class ReadyLogs:
    """Remembers, per model and pod, the ready event its runtime printed (None: none found)."""

    def __init__(
        self,
        on_found: Callable[[ModelKey], Awaitable[None]],
        read_log: Callable[[str, str, int], str | None] = kube.log_tail,
        workers: int = 2,
    ) -> None:
        self._on_found = on_found
        self._read_log = read_log
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="exo-logs")
        self._events: dict[ModelKey, dict[str, dict[str, Any] | None]] = {}
        self._reads: set[asyncio.Task] = set()

    def events(self, key: ModelKey, runtime_pods: list[dict[str, Any]]) -> dict[str, dict]:
        """The ready events found so far, by pod name; starts a read for each newly Ready pod."""
        known = self._events.setdefault(key, {})
        present = {p["metadata"]["name"] for p in runtime_pods}
        for name in [n for n in known if n not in present]:
            del known[name]  # a pod gone for good: its replacement is read when Ready
        for pod in runtime_pods:
            name = pod["metadata"]["name"]
            if name in known or not pod_is_ready(pod):
                continue
            known[name] = None
            task = asyncio.create_task(self._read(key, name))
            self._reads.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._reads.discard)
        return {name: event for name, event in known.items() if event}

    def forget(self, key: ModelKey) -> None:
        """Drops what is remembered of a deleted model."""
        self._events.pop(key, None)

    async def _read(self, key: ModelKey, pod: str) -> None:
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(self._pool, self._read_log, key[0], pod, TAIL_LINES)
        event = last_event(text, SERVE_EVENTS)
        known = self._events.get(key)
        if event is None or known is None or pod not in known:
            return  # no line (or no log); or the model or pod went away meanwhile
        known[pod] = event
        try:
            await self._on_found(key)
        except Exception as error:  # the periodic resync reconciles it again
            log.warning("reconcile of %s/%s after reading %s's log failed: %s", *key, pod, error)
