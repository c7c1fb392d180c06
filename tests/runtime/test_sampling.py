"""Sampling controls and richer outputs, through the official `openai` client against the real
Gemma model on one shared server: logprobs, logit_bias, penalties, top-k/min-p, seeds, n and echo.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import llama_cpp
import openai
import pytest
from exo_runtime.openai_api import ChatCompletionBody, OpenAIError
from exo_runtime.unsupported import refuse_unsupported_by_engine
from runtime_process import MODEL_NAME, RuntimeProcess

pytestmark = pytest.mark.runtime

HELLO = [{"role": "user", "content": "Name a colour."}]
PROMPT = "The capital of France is"
STORY = "Once upon a time"
REPETITIVE = "the the the the the the the the"


def client(runtime: RuntimeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{runtime.base_url}/v1", api_key="-", max_retries=0)


@pytest.fixture(scope="module")
def vocab(gemma_gguf: Path) -> llama_cpp.Llama:
    """The model's tokenizer alone (no weights), to name token ids for logit_bias."""
    return llama_cpp.Llama(str(gemma_gguf), vocab_only=True, verbose=False)


def token_id(vocab: llama_cpp.Llama, text: str) -> int:
    (token,) = vocab.tokenize(text.encode(), add_bos=False, special=False)
    return token


def greedy(runtime: RuntimeProcess, prompt: str = PROMPT, max_tokens: int = 6, **extra) -> str:
    reply = client(runtime).completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens, temperature=0, **extra
    )
    return reply.choices[0].text


# -- logprobs --


def test_chat_logprobs_are_the_greedy_choice_with_sorted_alternatives(shared_runtime) -> None:
    reply = client(shared_runtime).chat.completions.create(
        model=MODEL_NAME, messages=HELLO, max_tokens=6, temperature=0, logprobs=True, top_logprobs=4
    )
    choice = reply.choices[0]
    content = choice.logprobs.content
    assert len(content) == reply.usage.completion_tokens == 6
    for entry in content:
        alternatives = [top.logprob for top in entry.top_logprobs]
        assert len(alternatives) == 4
        assert alternatives == sorted(alternatives, reverse=True)
        # At temperature 0 the chosen token is the likeliest under the raw logits.
        assert (entry.token, entry.logprob) == (entry.top_logprobs[0].token, alternatives[0])
        assert entry.logprob <= 0 and bytes(entry.bytes).decode() == entry.token
    assert b"".join(bytes(e.bytes) for e in content).decode() == choice.message.content


def test_streamed_chat_logprobs_match_the_whole_reply(shared_runtime) -> None:
    asked = dict(model=MODEL_NAME, messages=HELLO, max_tokens=5, temperature=0, logprobs=True)
    whole = client(shared_runtime).chat.completions.create(**asked, top_logprobs=2)
    stream = client(shared_runtime).chat.completions.create(**asked, top_logprobs=2, stream=True)
    streamed = [
        e for event in stream for c in event.choices if c.logprobs for e in c.logprobs.content
    ]
    assert [(e.token, e.logprob) for e in streamed] == [
        (e.token, e.logprob) for e in whole.choices[0].logprobs.content
    ]


def test_completion_logprobs_give_tokens_offsets_and_alternatives(shared_runtime) -> None:
    reply = client(shared_runtime).completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3
    )
    choice = reply.choices[0]
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 5
    assert "".join(logprobs.tokens) == choice.text
    for token, offset, chosen, top in zip(
        logprobs.tokens,
        logprobs.text_offset,
        logprobs.token_logprobs,
        logprobs.top_logprobs,
        strict=True,
    ):
        assert choice.text[offset:].startswith(token)
        assert len(top) == 3 and max(top.values()) == chosen


def test_logprobs_leave_the_answer_unchanged(shared_runtime) -> None:
    assert greedy(shared_runtime, logprobs=2) == greedy(shared_runtime)


# -- logit_bias, penalties, top-k and min-p --


def test_logit_bias_bans_the_greedy_first_token_and_forces_another(shared_runtime, vocab) -> None:
    first = client(shared_runtime).completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=1
    )
    banned = token_id(vocab, first.choices[0].logprobs.tokens[0])
    unbiased = greedy(shared_runtime, max_tokens=1)
    assert greedy(shared_runtime, max_tokens=1, logit_bias={str(banned): -100}) != unbiased
    forced = token_id(vocab, " banana")
    assert greedy(shared_runtime, max_tokens=3, logit_bias={str(forced): 100}) == " banana" * 3


PENALTIES = [{"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repetition_penalty": 1.8}]


def test_each_penalty_changes_a_repetitive_greedy_answer(shared_runtime) -> None:
    # Sent together: the penalised sequences decode in one batch beside the plain one.
    with ThreadPoolExecutor(len(PENALTIES) + 1) as pool:
        answers = list(
            pool.map(
                lambda penalty: greedy(shared_runtime, REPETITIVE, 10, extra_body=penalty),
                [{}, *PENALTIES],
            )
        )
    plain, *penalised = answers
    assert plain.count(" the") >= 8, plain  # the model goes on repeating itself
    for penalty, answer in zip(PENALTIES, penalised, strict=True):
        assert answer.count(" the") < plain.count(" the"), (penalty, answer)


def test_top_k_of_one_is_greedy_even_at_temperature_two(shared_runtime) -> None:
    reply = client(shared_runtime).completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=2, extra_body={"top_k": 1}
    )
    assert reply.choices[0].text == greedy(shared_runtime)
    near_greedy = client(shared_runtime).completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=2, extra_body={"min_p": 1.0}
    )
    assert near_greedy.choices[0].text == greedy(shared_runtime)


# -- seeds, n and echo --


def test_a_seed_reproduces_a_sampled_answer_while_another_request_runs(shared_runtime) -> None:
    asked = dict(model=MODEL_NAME, prompt=STORY, max_tokens=12, temperature=1, seed=1234)
    alone = client(shared_runtime).completions.create(**asked).choices[0].text
    other = threading.Thread(target=greedy, args=(shared_runtime, "1, 2, 3,", 48))
    other.start()
    beside = client(shared_runtime).completions.create(**asked).choices[0].text
    other.join(60)
    assert beside == alone
    reseeded = client(shared_runtime).completions.create(**{**asked, "seed": 4321}).choices[0].text
    assert reseeded != alone


def test_n_choices_share_the_prompt_and_are_sampled_apart(shared_runtime) -> None:
    reply = client(shared_runtime).chat.completions.create(
        model=MODEL_NAME, messages=HELLO, max_tokens=6, temperature=0, n=3
    )
    single = client(shared_runtime).chat.completions.create(
        model=MODEL_NAME, messages=HELLO, max_tokens=6, temperature=0
    )
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    assert {c.message.content for c in reply.choices} == {single.choices[0].message.content}
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens  # counted once
    assert reply.usage.completion_tokens == 3 * single.usage.completion_tokens
    sampled = client(shared_runtime).completions.create(
        model=MODEL_NAME, prompt=STORY, max_tokens=12, temperature=1, seed=7, n=3
    )
    assert len({c.text for c in sampled.choices}) > 1, "the choices were not sampled apart"


def test_streamed_n_choices_interleave_by_index(shared_runtime) -> None:
    stream = client(shared_runtime).completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=0, n=2, stream=True
    )
    texts, finished = {0: "", 1: ""}, {}
    for event in stream:
        for choice in event.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert texts == {0: greedy(shared_runtime), 1: greedy(shared_runtime)}
    assert finished == {0: "length", 1: "length"}


def test_echo_puts_the_prompt_before_the_answer(shared_runtime) -> None:
    answer = greedy(shared_runtime)
    assert greedy(shared_runtime, echo=True) == PROMPT + answer
    stream = client(shared_runtime).completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=0, echo=True, stream=True
    )
    texts = [c.text for event in stream for c in event.choices]
    assert texts[0] == PROMPT and "".join(texts) == PROMPT + answer


# -- refusals --

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"

OUT_OF_RANGE = [
    (CHAT, {"top_k": -2}, "top_k"),
    (CHAT, {"min_p": 1.5}, "min_p"),
    (CHAT, {"repetition_penalty": 0}, "repetition_penalty"),
    (CHAT, {"presence_penalty": 2.5}, "presence_penalty"),
    (CHAT, {"frequency_penalty": -3}, "frequency_penalty"),
    (CHAT, {"logit_bias": {"12": 101}}, "logit_bias"),
    (CHAT, {"logit_bias": {"banana": 1}}, "logit_bias"),
    (CHAT, {"logit_bias": {"999999999": 1}}, "logit_bias"),
    (CHAT, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    (CHAT, {"top_logprobs": 2}, "top_logprobs"),
    (CHAT, {"n": 9}, "n"),  # more than the server's 8 parallel sequences
    (COMPLETIONS, {"logprobs": 6}, "logprobs"),
    (COMPLETIONS, {"echo": True, "logprobs": 1}, "echo"),
    (COMPLETIONS, {"suffix": "end"}, "suffix"),
]


@pytest.mark.parametrize(("path", "fields", "param"), OUT_OF_RANGE, ids=lambda v: str(v)[:30])
def test_a_field_out_of_range_gets_a_400_naming_it(shared_runtime, path, fields, param) -> None:
    base = {"model": MODEL_NAME, "max_tokens": 2}
    base |= {"messages": HELLO} if path == CHAT else {"prompt": PROMPT}
    response = httpx.post(shared_runtime.base_url + path, json=base | fields, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text


@pytest.mark.parametrize(
    ("fields", "refused_on_mlx"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"n": 2}, "n"),
        ({"logit_bias": {"1": 5}, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2}, None),
    ],
)
def test_what_mlx_cannot_do_is_refused_only_on_mlx(fields, refused_on_mlx) -> None:
    body = ChatCompletionBody(model=MODEL_NAME, messages=HELLO, **fields)
    refuse_unsupported_by_engine(body, "llamacpp")
    if refused_on_mlx is None:
        refuse_unsupported_by_engine(body, "mlx")
        return
    with pytest.raises(OpenAIError) as refused:
        refuse_unsupported_by_engine(body, "mlx")
    assert (refused.value.status, refused.value.param) == (400, refused_on_mlx)
    assert "mlx" in refused.value.message
