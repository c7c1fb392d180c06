"""Which slot a request gets and how the batch lists them, on the real model.

llama.cpp splits a batch over per-sequence KV streams into ubatches of consecutive, increasing
sequence ids only: busy slots kept low and the batch in slot order decode in one ubatch, any
other layout in several. These tests read the engine's slots and the batch it last decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from exo_runtime.engine import EngineOptions, GenerationRequest, SamplingParams
from exo_runtime.engines import llamacpp

pytestmark = pytest.mark.runtime

COUNTING = "1, 2, 3, 4, 5, 6,"  # the base model counts on: no early end of turn
SHORT = "Once upon a time"  # with 2 or 3 tokens generated, too short to be cached
# Far over the prefix cache's 16-token minimum.
STORY = (
    "The lighthouse keeper counted the ships every evening. On Monday there were three, "
    "on Tuesday five, on Wednesday two, and on Thursday the harbour was empty because of"
)


def load_engine(gemma_gguf: Path, prefix_cache_entries: int) -> llamacpp.LlamaCppEngine:
    options = EngineOptions(
        context_length=256, parallel=4, threads=2, prefix_cache_entries=prefix_cache_entries
    )
    return llamacpp.load(str(gemma_gguf), options)


@pytest.fixture
def engine(gemma_gguf: Path) -> Iterator[llamacpp.LlamaCppEngine]:
    loaded = load_engine(gemma_gguf, prefix_cache_entries=0)
    yield loaded
    loaded.close()


@pytest.fixture
def cached_engine(gemma_gguf: Path) -> Iterator[llamacpp.LlamaCppEngine]:
    loaded = load_engine(gemma_gguf, prefix_cache_entries=4)
    yield loaded
    loaded.close()


def submit(engine: llamacpp.LlamaCppEngine, request_id: str, prompt: str, max_tokens: int) -> None:
    tokens = engine.tokenize(prompt, add_special=True)
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    engine.submit(GenerationRequest(request_id, tokens, params))


def step_until_finished(engine: llamacpp.LlamaCppEngine, request_ids: list[str]) -> list[str]:
    """Step until every request of `request_ids` has finished; the order they finished in."""
    finished: list[str] = []
    while set(request_ids) - set(finished):
        assert engine.has_work(), f"idle before {request_ids} finished"
        finished += [c.request_id for c in engine.step() if c.finish_reason]
    return [r for r in finished if r in request_ids]


def slot_of(engine: llamacpp.LlamaCppEngine, request_id: str) -> int:
    return engine._active[(request_id, 0)].seq_id


def batch_seq_ids(engine: llamacpp.LlamaCppEngine) -> list[int]:
    """The sequence id of every token of the batch the last step decoded, in batch order."""
    batch = engine._batch
    return [batch.seq_id[i][0] for i in range(batch.n_tokens)]


def test_new_requests_take_the_lowest_free_slots_and_decode_in_slot_order(engine) -> None:
    # Four requests in slots 0-3; those in slots 1 and 3 end first, 1 before 3.
    for request_id, prompt, max_tokens in [
        ("long0", COUNTING, 40), ("short1", SHORT, 2),
        ("long2", COUNTING, 40), ("short3", SHORT, 3),
    ]:  # fmt: skip
        submit(engine, request_id, prompt, max_tokens)
    engine.step()
    assert [slot_of(engine, r) for r in ("long0", "short1", "long2", "short3")] == [0, 1, 2, 3]
    assert step_until_finished(engine, ["short1", "short3"]) == ["short1", "short3"]

    submit(engine, "new_a", COUNTING, 40)
    submit(engine, "new_b", COUNTING, 40)
    engine.step()  # admits both: prompt chunks beside the two decoding sequences
    assert (slot_of(engine, "new_a"), slot_of(engine, "new_b")) == (1, 3)
    mixed = batch_seq_ids(engine)
    assert mixed == sorted(mixed) and set(mixed) == {0, 1, 2, 3}, mixed

    engine.step()  # every sequence decodes one token
    assert batch_seq_ids(engine) == [0, 1, 2, 3]
    for request_id in ("long0", "long2", "new_a", "new_b"):
        engine.cancel(request_id)
    step_until_finished(engine, ["long0", "long2", "new_a", "new_b"])


def test_a_prefix_copy_goes_to_the_lowest_free_slot(cached_engine) -> None:
    engine = cached_engine
    # The story's cells stay in slot 0 as a cache entry; slots 1 then 2 end with nothing kept.
    submit(engine, "story", STORY, 6)
    submit(engine, "short1", SHORT, 2)
    submit(engine, "short2", SHORT, 3)
    step_until_finished(engine, ["story", "short1", "short2"])
    assert 0 in engine._prefix_cache and len(engine._prefix_cache) == 1

    # The entry goes on past this prompt (the story's answer): its cells are copied, not taken.
    submit(engine, "sequel", STORY + " the fog", 4)
    engine.step()
    assert slot_of(engine, "sequel") == 1
    assert 0 in engine._prefix_cache
    step_until_finished(engine, ["sequel"])
