"""The MLX engine's prefix cache (mlx-lm's LRUPromptCache): the same greedy tokens warm as
cold, and the reused prompt tokens reported on the first chunk."""

from __future__ import annotations

import pytest
from exo_runtime.engine import GenerationRequest, SamplingParams
from exo_runtime.prefix_cache import MIN_PREFIX_TOKENS

pytestmark = pytest.mark.mlx

# No other test of the tier starts with these words, so the first run is cold.
HARBOUR = (
    "The harbour master wrote down every ship: a trawler on Monday, two ferries on Tuesday, "
    "a yacht on Wednesday and nothing on Thursday because of the storm, so"
)


def run(engine, request_id: str, prompt: list[int]) -> tuple[list[int], int | None]:
    """Greedy tokens of `prompt` alone, and the cached tokens its first chunk reported."""
    greedy = SamplingParams(max_tokens=4, temperature=0)
    engine.submit(GenerationRequest(request_id, prompt, greedy))
    chunks = []
    while engine.has_work():
        chunks.extend(engine.step())
    assert all(c.finish_reason != "error" for c in chunks), chunks
    return [c.token_id for c in chunks if c.token_id is not None], chunks[0].cached_tokens


def test_a_warm_prompt_gives_the_cold_tokens_and_reports_its_reuse(mlx_engine) -> None:
    prompt = mlx_engine.tokenize(HARBOUR, add_special=True)
    cold, cold_hits = run(mlx_engine, "cold", prompt)
    warm, warm_hits = run(mlx_engine, "warm", prompt)
    assert cold_hits == 0
    assert warm == cold
    assert warm_hits == len(prompt) - 1  # all but the token whose logits come next
    longer = mlx_engine.tokenize(HARBOUR + " the harbour stayed", add_special=True)
    _, longer_hits = run(mlx_engine, "longer", longer)
    assert MIN_PREFIX_TOKENS <= len(prompt) - 1 <= longer_hits < len(longer)
