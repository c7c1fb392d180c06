"""The scheduler thread over the real engine: handoff to asyncio queues, refusals, the bound."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from exo_runtime.engine import EngineOptions, GenerationRequest, SamplingParams
from exo_runtime.engines import llamacpp
from exo_runtime.metrics import RuntimeMetrics
from exo_runtime.scheduler import QueueFullError, Scheduler

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def engine(gemma_gguf: Path):
    options = EngineOptions(context_length=128, parallel=2, threads=2)
    loaded = llamacpp.load(str(gemma_gguf), options)
    yield loaded
    loaded.close()


def request(
    engine, request_id: str, max_tokens: int, prompt: str = "1, 2, 3,"
) -> GenerationRequest:
    tokens = engine.tokenize(prompt, add_special=True)
    return GenerationRequest(request_id, tokens, SamplingParams(max_tokens, temperature=0))


async def drain(chunks: asyncio.Queue) -> tuple[int, str | None, str | None]:
    tokens = 0
    while True:
        chunk = await asyncio.wait_for(chunks.get(), 60)
        tokens += chunk.token_id is not None
        if chunk.finish_reason:
            return tokens, chunk.finish_reason, chunk.error


def test_refused_request_ends_with_an_error_and_the_rest_are_served(engine) -> None:
    async def scenario() -> None:
        scheduler = Scheduler(engine, parallel=2, max_queue=4, metrics=RuntimeMetrics())
        scheduler.start(asyncio.get_running_loop())
        try:
            good = scheduler.submit(request(engine, "good", 6))
            too_long = scheduler.submit(request(engine, "long", 4, prompt="word " * 200))
            also_good = scheduler.submit(request(engine, "also", 3))
            assert await drain(good) == (6, "length", None)
            tokens, finish, error = await drain(too_long)
            assert (tokens, finish) == (0, "error") and "context holds 128" in error
            assert await drain(also_good) == (3, "length", None)
            await asyncio.wait_for(scheduler.idle.wait(), 10)
            assert scheduler.in_flight == 0
        finally:
            await asyncio.to_thread(scheduler.stop, close_engine=False)

    asyncio.run(scenario())


def test_submissions_past_parallel_plus_max_queue_are_refused(engine) -> None:
    async def scenario() -> None:
        scheduler = Scheduler(engine, parallel=2, max_queue=1, metrics=RuntimeMetrics())
        scheduler.start(asyncio.get_running_loop())
        try:
            accepted = [scheduler.submit(request(engine, f"r{i}", 40)) for i in range(3)]
            with pytest.raises(QueueFullError):
                scheduler.submit(request(engine, "r3", 1))
            for i in range(3):
                scheduler.cancel(f"r{i}")
            finishes = [(await drain(chunks))[1] for chunks in accepted]
            assert set(finishes) <= {"cancelled", "length"} and "cancelled" in finishes
        finally:
            await asyncio.to_thread(scheduler.stop, close_engine=False)

    asyncio.run(scenario())
