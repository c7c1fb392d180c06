"""The periodic resync reconciles every model once a period without holding the event loop:
a reconcile that changes nothing never waits, so the models go one at a time, the loop free
between them."""

import asyncio
import itertools
import time
from types import SimpleNamespace

from exo_operator.handlers.lifecycle import _resync
from exo_operator.settings import OperatorSettings


class QuietReconciler:
    """Reconciles like an idle model does: a few milliseconds of work and no wait."""

    def __init__(self, timeline: list[str]):
        self.timeline = timeline
        self.done: list[tuple[str, str]] = []

    async def reconcile(self, key: tuple[str, str]) -> None:
        time.sleep(0.002)
        self.timeline.append("reconcile")
        self.done.append(key)


def test_resync_reconciles_every_model_each_period_with_the_loop_free_between_them():
    models = {("ns", f"m{i}"): [] for i in range(50)}

    async def scenario() -> tuple[list[str], QuietReconciler]:
        timeline: list[str] = []
        reconciler = QuietReconciler(timeline)
        memo = SimpleNamespace(
            ready=asyncio.Event(),
            settings=OperatorSettings(resync_seconds=0.5),
            reconciler=reconciler,
        )
        memo.ready.set()

        async def other_events() -> None:  # a pod event's handler, say
            while True:
                timeline.append("event")
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(_resync(memo, models)), asyncio.create_task(other_events())]
        deadline = time.monotonic() + 10
        while len(reconciler.done) < len(models) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return timeline, reconciler

    timeline, reconciler = asyncio.run(scenario())
    # Every model, once each, in one pass.
    assert reconciler.done[: len(models)] == list(models)
    # Never two reconciles back to back: other events ran between every two of them.
    passes = [a for a, b in itertools.pairwise(timeline) if a == b == "reconcile"]
    assert not passes, f"{len(passes)} reconciles ran straight after another one"
