"""Posts an ExoModel's Events in the background, on threads of their own.

A model's reconciles run one at a time. Were its Events posted inside the reconcile, the next
one (a pod turning Ready) would wait for them, and while hundreds of models start at once they
would wait behind every child apply queued on the API threads. So a reconcile hands its Events
over and returns; each keeps the time of its transition, so `kubectl describe` lists them in the
order they happened even when one is posted a moment late.
"""

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from exo_operator import kube
from exo_operator.status import Transition

log = logging.getLogger(__name__)


class EventPoster:
    """Posts each model's Events in order, never holding up the reconcile that made them."""

    def __init__(self, workers: int = 2):
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="exo-post")
        self._pending: set[asyncio.Task[None]] = set()

    def post(self, body: dict[str, Any], transitions: Sequence[Transition]) -> None:
        """Queues the Events of one status write; returns at once."""
        if not transitions:
            return
        task = asyncio.get_running_loop().create_task(
            self._post_in_order(body, list(transitions), datetime.now(UTC))
        )
        self._pending.add(task)  # a task nobody holds may be collected before it runs
        task.add_done_callback(self._pending.discard)

    async def settled(self) -> None:
        """Waits until every queued Event is posted (or given up)."""
        while self._pending:
            await asyncio.gather(*self._pending)

    async def _post_in_order(
        self, body: dict[str, Any], transitions: list[Transition], at: datetime
    ) -> None:
        loop = asyncio.get_running_loop()
        for t in transitions:
            try:
                await loop.run_in_executor(
                    self._pool, kube.post_event, body, t.type, t.reason, t.message, at
                )
            except (ApiException, HTTPError, OSError) as error:
                # Events are a courtesy: one that cannot be posted (a namespace going away) is
                # skipped.
                why = kube.describe_api_error(error) if isinstance(error, ApiException) else error
                log.info("event %s on %s not posted: %s", t.reason, body["metadata"]["name"], why)
