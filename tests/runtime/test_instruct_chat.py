"""An instruction-tuned model answers a question and ends its turn by itself.

SmolLM2 135M Instruct (ChatML, `<|im_end|>`) served by `exo-runtime serve` on loopback, asked
through the official `openai` client. Unlike the Gemma base model, it stops because the model
chose to end its turn, which is what `finish_reason == "stop"` must mean for a chat client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from runtime_process import RuntimeProcess, ready_runtime

pytestmark = pytest.mark.runtime

MODEL_NAME = "smollm2-instruct"
# A model of 135M parameters, quantized to 4 bits, needs to be told to be brief: with its default
# system prompt it rambles in French (and llama.cpp's own chat completion does the same).
QUESTION = [
    {"role": "system", "content": "Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]
# Far more room than the answer needs, so that a "stop" cannot be a length cut in disguise.
MAX_TOKENS = 64
TEMPLATE_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


@pytest.fixture(scope="module")
def instruct_runtime(
    smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    # The later --model-name wins over the tier's default.
    with ready_runtime(
        smollm2_gguf,
        tmp_path_factory.mktemp("instruct-runtime"),
        "--context-length", "512", "--parallel", "2", "--model-name", MODEL_NAME,
    ) as runtime:  # fmt: skip
        yield runtime


@pytest.fixture(scope="module")
def client(instruct_runtime: RuntimeProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{instruct_runtime.base_url}/v1", api_key="unused", max_retries=0
    )


def test_the_served_template_is_the_models_own_chatml(instruct_runtime: RuntimeProcess) -> None:
    # The GGUF carries its template: the runtime must use it, not a built-in guess.
    log = instruct_runtime.log()
    assert "chat template: model" in log, log[-2000:]


def test_a_question_gets_paris_and_a_natural_end_of_turn(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, max_tokens=MAX_TOKENS, temperature=0
    )
    choice = reply.choices[0]
    assert "Paris" in choice.message.content, choice.message.content
    assert choice.finish_reason == "stop", choice
    assert not any(m in choice.message.content for m in TEMPLATE_MARKERS), choice.message.content
    assert reply.usage.completion_tokens < MAX_TOKENS


def test_a_streamed_question_gets_paris_and_a_natural_end_of_turn(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=QUESTION,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish_reasons, usage = "", [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason is not None:
                finish_reasons.append(choice.finish_reason)
    assert "Paris" in text, text
    assert finish_reasons == ["stop"], (finish_reasons, text)
    assert not any(m in text for m in TEMPLATE_MARKERS), text
    assert usage is not None and usage.completion_tokens < MAX_TOKENS
