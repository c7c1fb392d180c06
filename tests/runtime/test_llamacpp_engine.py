"""The llama.cpp engine in process: continuous batching, cancellation, chunked prefill, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from exo_runtime.engine import EngineOptions, GenerationRequest, ModelLoadError, SamplingParams
from exo_runtime.engines import llamacpp
from fixtures.greedy import NEAR_TIE

pytestmark = pytest.mark.runtime

PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time", "def fibonacci(n):"]


def engine_with(gemma_gguf: Path, **options) -> llamacpp.LlamaCppEngine:
    # No prefix cache: it changes which slot a request gets, and llama.cpp's greedy choice can
    # hang on the batch layout in a near tie; tests/runtime/test_prefix_cache.py covers it.
    defaults = {"context_length": 256, "parallel": 4, "threads": 2, "batch_size": 512,
                "prefix_cache_entries": 0}  # fmt: skip
    return llamacpp.load(str(gemma_gguf), EngineOptions(**{**defaults, **options}))


@pytest.fixture(scope="module")
def engine(gemma_gguf: Path):
    loaded = engine_with(gemma_gguf)
    yield loaded
    loaded.close()


def greedy(
    engine, request_id: str, prompt: str, max_tokens: int, logprobs: int | None = None
) -> GenerationRequest:
    tokens = engine.tokenize(prompt, add_special=True)
    params = SamplingParams(max_tokens=max_tokens, temperature=0, logprobs=logprobs)
    return GenerationRequest(request_id, tokens, params)


def run_to_end(engine) -> tuple[dict[str, list[int]], dict[str, str], list[int]]:
    """Step until idle: token ids and finish reason per request, and chunks per step."""
    tokens: dict[str, list[int]] = {}
    finish: dict[str, str] = {}
    per_step = []
    while engine.has_work():
        chunks = engine.step()
        per_step.append(len(chunks))
        for chunk in chunks:
            if chunk.token_id is not None:
                tokens.setdefault(chunk.request_id, []).append(chunk.token_id)
            if chunk.finish_reason:
                finish[chunk.request_id] = chunk.finish_reason
    return tokens, finish, per_step


def test_each_step_advances_every_active_sequence_by_one_token(engine) -> None:
    for i, prompt in enumerate(PROMPTS):
        engine.submit(greedy(engine, f"r{i}", prompt, 10))
    tokens, finish, per_step = run_to_end(engine)
    assert finish == {f"r{i}": "length" for i in range(4)}
    assert all(len(t) == 10 for t in tokens.values())
    # One step prefills all four prompts and samples their first tokens; nine more finish them.
    assert per_step == [4] * 10


def test_batched_sequences_generate_what_each_generates_alone_but_at_near_ties(engine) -> None:
    alone = {}  # each request's chunks, with the two likeliest tokens at every step
    for i, prompt in enumerate(PROMPTS):
        engine.submit(greedy(engine, f"a{i}", prompt, 12, logprobs=2))
        while engine.has_work():
            alone.setdefault(f"a{i}", []).extend(c for c in engine.step() if c.token_id is not None)
    for i, prompt in enumerate(PROMPTS):
        engine.submit(greedy(engine, f"a{i}", prompt, 12))
    together = run_to_end(engine)[0]
    for request_id, chunks in alone.items():
        tokens = [c.token_id for c in chunks]
        batched = together[request_id]
        pairs = enumerate(zip(tokens, batched, strict=False))
        parted = next((i for i, (a, b) in pairs if a != b), None)
        if parted is None:
            assert batched == tokens, request_id
        else:  # only at a near tie of the lone run
            (_, first), (_, second) = chunks[parted].logprob.top
            assert first - second < NEAR_TIE, (request_id, parted, chunks[parted].logprob)


def test_cancel_frees_the_sequence_and_its_cache_at_the_next_step(engine) -> None:
    reference = greedy(engine, "ref", PROMPTS[0], 8)
    engine.submit(reference)
    expected = run_to_end(engine)[0]["ref"]
    # Fill every slot, cancel one mid-generation, and give its slot to a new request.
    for i in range(4):
        engine.submit(greedy(engine, f"long{i}", PROMPTS[1], 200))
    for _ in range(5):
        engine.step()
    engine.cancel("long2")
    engine.submit(greedy(engine, "ref", PROMPTS[0], 8))
    chunks = engine.step()
    assert [c.finish_reason for c in chunks if c.request_id == "long2"] == ["cancelled"]
    for i in (0, 1, 3):
        engine.cancel(f"long{i}")
    first = [c.token_id for c in chunks if c.request_id == "ref"]
    tokens, finish, _ = run_to_end(engine)
    # The reused slot's cache held nothing of the cancelled sequence: same tokens as alone.
    assert first + tokens["ref"] == expected
    assert finish["ref"] == "length"
    assert {finish[f"long{i}"] for i in (0, 1, 3)} == {"cancelled"}


def test_cancelling_a_waiting_request_ends_it_without_generating(engine) -> None:
    for i in range(5):  # one more than the slots: the last waits
        engine.submit(greedy(engine, f"w{i}", PROMPTS[2], 4))
    engine.cancel("w4")
    tokens, finish, _ = run_to_end(engine)
    assert finish["w4"] == "cancelled" and "w4" not in tokens


def test_prompt_longer_than_the_batch_is_prefilled_in_chunks(gemma_gguf: Path, engine) -> None:
    prompt = " ".join(str(n) for n in range(60))  # over 100 tokens
    engine.submit(greedy(engine, "whole", prompt, 8))
    whole = run_to_end(engine)[0]["whole"]
    small = engine_with(gemma_gguf, batch_size=16, parallel=1)
    try:
        request = greedy(small, "chunked", prompt, 8)
        assert len(request.prompt_tokens) > 6 * 16
        small.submit(request)
        tokens, _, per_step = run_to_end(small)
        assert tokens["chunked"] == whole
        assert len(per_step) > 8  # prefill took several steps before the 8 tokens
    finally:
        small.close()


def test_gemma_end_of_turn_and_eos_end_a_generation(engine) -> None:
    assert {1, 106} <= engine.end_of_turn_token_ids()  # <eos>, <end_of_turn>


def test_an_end_token_ends_the_sequence_uncounted_and_unseen(engine) -> None:
    engine.submit(greedy(engine, "free", PROMPTS[1], 8))
    free_tokens = run_to_end(engine)[0]["free"]
    # The first token from the third on that was not generated before it: ending there
    # leaves exactly the tokens before it.
    k = next(i for i in range(2, 8) if free_tokens[i] not in free_tokens[:i])
    end = free_tokens[k]
    request = greedy(engine, "ended", PROMPTS[1], 8)
    request.params = SamplingParams(max_tokens=8, temperature=0, stop_token_ids=(end,))
    engine.submit(request)
    text, finish, counted = "", None, []
    while engine.has_work():
        for chunk in engine.step():
            text += chunk.text
            finish = chunk.finish_reason or finish
            if chunk.token_id is not None:
                counted.append(chunk.token_id)
    assert (counted, finish) == (free_tokens[:k], "stop")
    assert text == engine.detokenize(free_tokens[:k])


def test_chat_prompt_answer_shows_no_template_tokens(engine) -> None:
    prompt = "<bos><start_of_turn>user\nSay hi.<end_of_turn>\n<start_of_turn>model\n"
    tokens = engine.tokenize(prompt, add_special=False)
    assert tokens[:2] == [2, 105] and 106 in tokens  # the markers became special tokens
    engine.submit(GenerationRequest("chat", tokens, SamplingParams(32, 0.0)))
    text = ""
    while engine.has_work():
        text += "".join(chunk.text for chunk in engine.step())
    assert text.strip()
    assert "<start_of_turn>" not in text and "<end_of_turn>" not in text, text


def test_the_model_carries_no_chat_template_and_says_it_is_gemma3(engine) -> None:
    assert engine.embedded_chat_template() is None
    assert engine.architecture() == "gemma3"
    assert engine.special_tokens() == {"bos_token": "<bos>", "eos_token": "<eos>"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"", "not a GGUF file"),
        (b"PK\x03\x04 a zip file", "not a GGUF file"),
        (b"GGUF\x03\x00", "truncated"),
    ],
)
def test_unloadable_file_raises_model_load_error_naming_it(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message) as caught:
        llamacpp.load(str(path), EngineOptions(threads=1))
    assert str(path) in str(caught.value)


def test_truncated_model_file_raises_model_load_error(gemma_gguf: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    with gemma_gguf.open("rb") as src:
        path.write_bytes(src.read(8 << 20))
    with pytest.raises(ModelLoadError, match="truncated") as caught:
        llamacpp.load(str(path), EngineOptions(threads=1))
    assert str(path) in str(caught.value)
