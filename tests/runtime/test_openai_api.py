"""The shim through the official `openai` client, against the real model on loopback."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from runtime_process import MODEL_NAME, RuntimeProcess

pytestmark = pytest.mark.runtime

TEMPLATE_MARKERS = ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>")
# A prompt the base model continues without ending it: a counting list runs on and on.
COUNTING_PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"


def client(runtime: RuntimeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{runtime.base_url}/v1", api_key="unused", max_retries=0)


def test_models_lists_the_served_model(shared_runtime: RuntimeProcess) -> None:
    models = client(shared_runtime).models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]


def test_models_reports_the_engine_and_the_context_in_use(shared_runtime: RuntimeProcess) -> None:
    (model,) = httpx.get(f"{shared_runtime.base_url}/v1/models").json()["data"]
    assert (model["engine"], model["context_length"]) == ("llamacpp", 512)


def test_an_unset_context_is_the_trained_one_capped(start_runtime) -> None:
    # Gemma 3 270M was trained on 32768 tokens: without --context-length the cap applies.
    runtime = start_runtime("--max-context-length", "1024", "--parallel", "2")
    (model,) = httpx.get(f"{runtime.base_url}/v1/models").json()["data"]
    assert model["context_length"] == 1024
    too_long = {"model": MODEL_NAME, "prompt": "word " * 1100, "max_tokens": 1}
    response = httpx.post(f"{runtime.base_url}/v1/completions", json=too_long, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_chat_answer_is_non_empty_and_shows_no_template_tokens(
    shared_runtime: RuntimeProcess,
) -> None:
    reply = client(shared_runtime).chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=48,
        temperature=0,
    )
    answer = reply.choices[0].message.content
    assert answer.strip(), "the chat answer is empty"
    assert not any(marker in answer for marker in TEMPLATE_MARKERS), answer
    # This base model never ranks <end_of_turn> first, so its answers end by length; an
    # instruction-tuned model ends with "stop" (see the end-token tests).
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 48
    assert reply.usage.prompt_tokens > 5


def test_chat_answer_ends_at_an_end_token_which_is_not_shown(
    shared_runtime: RuntimeProcess,
) -> None:
    newline = 107  # Gemma's "\n": the base model's answers reach one within a few tokens
    reply = client(shared_runtime).chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=48,
        temperature=0,
        extra_body={"stop_token_ids": [newline]},
    )
    answer = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop", answer
    assert answer.strip() and "\n" not in answer, answer
    assert reply.usage.completion_tokens < 48


def test_chat_streams_the_same_answer_as_without_streaming(shared_runtime: RuntimeProcess) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    whole = client(shared_runtime).chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=64, temperature=0
    )
    stream = client(shared_runtime).chat.completions.create(
        model=MODEL_NAME,
        messages=messages,
        max_tokens=64,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for event in stream:
        if event.usage is not None:
            usage = event.usage
        for choice in event.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_completion_without_streaming_stops_at_max_tokens(shared_runtime: RuntimeProcess) -> None:
    reply = client(shared_runtime).completions.create(
        model=MODEL_NAME, prompt=COUNTING_PROMPT, max_tokens=12, temperature=0
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 12
    assert "13" in reply.choices[0].text


def test_completion_stops_at_a_stop_string_and_leaves_it_out(
    shared_runtime: RuntimeProcess,
) -> None:
    reply = client(shared_runtime).completions.create(
        model=MODEL_NAME, prompt=COUNTING_PROMPT, max_tokens=30, temperature=0, stop=[" 15"]
    )
    assert reply.choices[0].finish_reason == "stop"
    text = reply.choices[0].text
    assert "14" in text and "15" not in text, text


def test_seeded_sampling_repeats_and_temperature_varies(shared_runtime: RuntimeProcess) -> None:
    def sample(seed: int) -> str:
        return (
            client(shared_runtime)
            .completions.create(
                model=MODEL_NAME,
                prompt="Once upon a time",
                max_tokens=24,
                temperature=1.5,
                top_p=0.95,
                seed=seed,
            )
            .choices[0]
            .text
        )

    first = sample(7)
    assert sample(7) == first, "the same seed gave a different text"
    assert any(sample(seed) != first for seed in (8, 9, 10)), "three other seeds gave the same text"


async def _stream_completion(base_url: str, max_tokens: int) -> tuple[int, int, str | None, float]:
    """(content events, usage.completion_tokens, finish_reason, seconds to first token)."""
    async_client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    started = time.perf_counter()
    first_token_at = None
    events, usage, finish = 0, None, None
    stream = await async_client.completions.create(
        model=MODEL_NAME,
        prompt=COUNTING_PROMPT,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for event in stream:
        if event.usage is not None:
            usage = event.usage
        for choice in event.choices:
            if choice.finish_reason is None:
                events += 1
                first_token_at = first_token_at or time.perf_counter()
            finish = choice.finish_reason or finish
    await async_client.close()
    return events, usage.completion_tokens, finish, first_token_at - started


def test_eight_concurrent_streams_all_complete_with_their_token_counts(
    shared_runtime: RuntimeProcess,
) -> None:
    async def run_all() -> list[tuple[int, int, str | None, float]]:
        return await asyncio.gather(
            *(_stream_completion(shared_runtime.base_url, 24 + i) for i in range(8))
        )

    results = asyncio.run(run_all())
    for i, (events, completion_tokens, finish, _ttft) in enumerate(results):
        assert finish == "length", f"stream {i} ended with {finish}"
        assert events == completion_tokens == 24 + i, f"stream {i}: {events} events"
    assert shared_runtime.metric("exo_runtime_active_sequences") == 0


def test_a_client_that_disconnects_cancels_its_generation(shared_runtime: RuntimeProcess) -> None:
    cancelled_before = shared_runtime.metric("exo_runtime_requests_total", 'outcome="cancelled"')
    generated_before = shared_runtime.metric("exo_runtime_generated_tokens_total")
    body = {
        "model": MODEL_NAME,
        "prompt": COUNTING_PROMPT,
        "max_tokens": 400,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{shared_runtime.base_url}/v1/completions", json=body, timeout=30
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [line for _, line in zip(range(6), lines, strict=False)]
        assert any(line.startswith("data: ") for line in received)
        assert shared_runtime.metric("exo_runtime_active_sequences") == 1
    # The connection is closed: the sequence must be freed long before its 400 tokens.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if shared_runtime.metric("exo_runtime_active_sequences") == 0:
            break
        time.sleep(0.05)
    assert shared_runtime.metric("exo_runtime_active_sequences") == 0
    assert (
        shared_runtime.metric("exo_runtime_requests_total", 'outcome="cancelled"')
        == cancelled_before + 1
    )
    assert shared_runtime.metric("exo_runtime_generated_tokens_total") - generated_before < 200


def test_metrics_count_requests_tokens_and_time_to_first_token(
    shared_runtime: RuntimeProcess,
) -> None:
    ok_before = shared_runtime.metric("exo_runtime_requests_total", 'outcome="ok"')
    tokens_before = shared_runtime.metric("exo_runtime_generated_tokens_total")
    ttft_before = shared_runtime.metric("exo_runtime_time_to_first_token_seconds_count")
    client(shared_runtime).completions.create(
        model=MODEL_NAME, prompt=COUNTING_PROMPT, max_tokens=5, temperature=0
    )
    assert shared_runtime.metric("exo_runtime_requests_total", 'outcome="ok"') == ok_before + 1
    assert shared_runtime.metric("exo_runtime_generated_tokens_total") == tokens_before + 5
    assert shared_runtime.metric("exo_runtime_time_to_first_token_seconds_count") == ttft_before + 1
    assert shared_runtime.metric("exo_runtime_prompt_tokens_total") > 0
    assert shared_runtime.metric("exo_runtime_load_seconds") > 0
    assert shared_runtime.metric("exo_runtime_warmup_seconds") > 0
    assert shared_runtime.metric("exo_runtime_queue_depth") == 0
