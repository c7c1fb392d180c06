"""The prefix cache on the real model: the same greedy answers as without it, the reused tokens
reported in `usage`, and eviction that never costs a request."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from exo_runtime.cli import build_parser
from fixtures.greedy import NEAR_TIE
from runtime_process import MODEL_NAME, RuntimeProcess, launch

pytestmark = pytest.mark.runtime

# Long enough to be worth caching (far over the 16-token minimum), varied enough that the
# base model's greedy continuation depends on all of it.
STORY = (
    "The lighthouse keeper counted the ships every evening. On Monday there were three, "
    "on Tuesday five, on Wednesday two, and on Thursday the harbour was empty because of "
    "the storm. The keeper wrote each number in a green notebook and"
)
SUFFIXES = (
    " then", " on Friday", " the notebook", " the next morning", " his daughter", " at noon",
)  # fmt: skip


def client(runtime: RuntimeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{runtime.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def cached_and_uncached(
    gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RuntimeProcess, RuntimeProcess]]:
    """Two servers of the same model, the prefix cache on (the default) and off."""
    # One thread each: the two servers run side by side on the tier's two cores.
    args = ("--context-length", "1024", "--parallel", "4", "--threads", "1")
    cached = launch(gemma_gguf, tmp_path_factory.mktemp("cached"), *args)
    uncached = launch(
        gemma_gguf, tmp_path_factory.mktemp("uncached"), *args, "--prefix-cache-entries", "0"
    )
    try:
        cached.wait_ready(timeout=240)
        uncached.wait_ready(timeout=240)
        yield cached, uncached
    finally:
        cached.stop()
        uncached.stop()


def complete(runtime: RuntimeProcess, prompt: str, max_tokens: int = 12) -> tuple[str, int]:
    """The greedy completion of `prompt` and the prompt tokens the server reused."""
    reply = client(runtime).completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens, temperature=0
    )
    return reply.choices[0].text, reply.usage.prompt_tokens_details.cached_tokens


def greedy_tokens(runtime: RuntimeProcess, prompt: str) -> tuple[list[str], list[dict], int]:
    """The greedy completion's tokens, the two likeliest at each, and the prompt tokens reused."""
    reply = client(runtime).completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=12, temperature=0, logprobs=2
    )
    logprobs = reply.choices[0].logprobs
    cached = reply.usage.prompt_tokens_details.cached_tokens
    return logprobs.tokens, logprobs.top_logprobs, cached


def test_greedy_answers_with_the_cache_equal_those_without_it(cached_and_uncached) -> None:
    cached, uncached = cached_and_uncached
    # The story, then longer and shorter prompts sharing its start, then the story again.
    prompts = [STORY, STORY + SUFFIXES[0], STORY[:150], STORY + SUFFIXES[1], STORY]
    reused = []
    for prompt in prompts:
        with_cache, hits = complete(cached, prompt)
        without_cache, misses = complete(uncached, prompt)
        assert with_cache == without_cache, prompt
        assert misses == 0
        reused.append(hits)
    assert all(hits > 16 for hits in reused[1:]), reused


def test_a_second_chat_turn_reuses_the_first(cached_and_uncached) -> None:
    cached, _ = cached_and_uncached
    messages = [{"role": "user", "content": "Tell me about lighthouses. " + STORY}]
    first = client(cached).chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=16, temperature=0
    )
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And what about the notebook?"},
    ]
    second = client(cached).chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0
    )
    reused = second.usage.prompt_tokens_details.cached_tokens
    # The whole first prompt at least, and never more than the first turn held.
    first_turn = first.usage.prompt_tokens + first.usage.completion_tokens
    assert first.usage.prompt_tokens <= reused <= first_turn, (reused, first.usage)
    assert reused < second.usage.prompt_tokens


def test_streamed_usage_reports_the_cached_tokens(cached_and_uncached) -> None:
    cached, _ = cached_and_uncached
    complete(cached, STORY + " and so")
    before = cached.metric("exo_runtime_prompt_tokens_cached_total")
    stream = client(cached).completions.create(
        model=MODEL_NAME,
        prompt=STORY + " and so on",
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(usage) == 1
    reused = usage[0].prompt_tokens_details.cached_tokens
    assert 16 < reused < usage[0].prompt_tokens
    assert cached.metric("exo_runtime_prompt_tokens_cached_total") == before + reused


def test_concurrent_requests_sharing_a_prefix_are_all_right(cached_and_uncached) -> None:
    cached, uncached = cached_and_uncached
    complete(cached, STORY)  # the shared start is in the cache
    prompts = [STORY + suffix for suffix in SUFFIXES]  # more than the 4 slots
    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(lambda p: greedy_tokens(cached, p), prompts))
    for prompt, (tokens, _, _) in zip(prompts, answers, strict=True):
        alone, top, _ = greedy_tokens(uncached, prompt)
        pairs = enumerate(zip(tokens, alone, strict=False))
        parted = next((i for i, (a, b) in pairs if a != b), None)
        if parted is None:
            assert tokens == alone, prompt
        else:  # only at a near tie of the lone run
            first, second = sorted(top[parted].values(), reverse=True)[:2]
            assert first - second < NEAR_TIE, (prompt, parted, top[parted])
    assert any(hits > 16 for *_, hits in answers), answers


def test_a_full_cache_gives_way_to_new_requests(start_runtime) -> None:
    # Two slots, both holding cache entries after two requests: whatever comes next, alone,
    # concurrently or as long as the context allows, evicts them and succeeds.
    runtime = start_runtime("--context-length", "512", "--parallel", "2", "--threads", "1")
    for i in range(4):
        complete(runtime, f"Entry {i}. {STORY}", max_tokens=4)
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: complete(runtime, f"{i}: {STORY}", 4), range(4)))
    assert all(text for text, _ in replies)
    long_prompt = " ".join(f"word{i}" for i in range(130))  # most of the 512 tokens
    reply = client(runtime).completions.create(
        model=MODEL_NAME, prompt=long_prompt, max_tokens=8, temperature=0
    )
    assert reply.choices[0].text and reply.usage.prompt_tokens > 400
    assert reply.usage.prompt_tokens_details.cached_tokens == 0
    assert runtime.metric("exo_runtime_requests_total", 'outcome="error"') == 0


def test_a_prefix_far_behind_the_sliding_window_is_reused_only_with_swa_full(
    start_runtime,
) -> None:
    # Gemma 3 attends over a 512-token sliding window on most layers. By default (as in
    # llama-server) those layers keep only the last window and a batch of cells, which is all
    # that the next turn of a chat needs. A prompt sharing only the first half of a long
    # cached one needs cells already dropped: it prefills from scratch, with the same answer;
    # --swa-full keeps every cell and reuses the half.
    args = ("--context-length", "2048", "--parallel", "1", "--threads", "2")
    default = start_runtime(*args)
    full = start_runtime(*args, "--swa-full")
    long_prompt = " ".join(f"{STORY} ({i})" for i in range(24))  # ~1200 tokens
    half = " ".join(f"{STORY} ({i})" for i in range(12)) + " Then the storm came back and"
    answers = {}
    for name, runtime in (("default", default), ("full", full)):
        complete(runtime, long_prompt, max_tokens=4)
        answers[name] = complete(runtime, half, max_tokens=8)
    (default_text, default_reused), (full_text, full_reused) = answers.values()
    assert default_text == full_text
    assert default_reused == 0
    assert full_reused > 512, full_reused


def test_the_flag_reads_its_variable_and_refuses_a_negative(monkeypatch, capsys) -> None:
    monkeypatch.setenv("EXO_PREFIX_CACHE_ENTRIES", "3")
    assert build_parser().parse_args(["serve"]).prefix_cache_entries == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--prefix-cache-entries", "-1"])
    assert "0 or more" in capsys.readouterr().err


def test_swa_full_is_off_unless_its_flag_or_variable_says_so(monkeypatch) -> None:
    assert build_parser().parse_args(["serve"]).swa_full is False
    assert build_parser().parse_args(["serve", "--swa-full"]).swa_full is True
    monkeypatch.setenv("EXO_SWA_FULL", "true")
    assert build_parser().parse_args(["serve"]).swa_full is True
