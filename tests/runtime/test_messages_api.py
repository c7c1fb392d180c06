"""Anthropic's Messages API (`POST /v1/messages`), asked through the official `anthropic` client.

SmolLM2 135M Instruct served by `exo-runtime serve` on loopback with an API key, one server for
the module. The SDK (2.x) no longer takes `temperature`, which the API still does, so greedy
requests pass it as `extra_body`; it sends its key as a bearer token, so `x-api-key` (what older
Anthropic clients send) is checked with httpx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from runtime_process import RuntimeProcess, ready_runtime

pytestmark = pytest.mark.runtime

MODEL_NAME = "smollm2-instruct"
API_KEY = "s3cret"
MAX_PROMPT_BYTES = 16 * 1024
# Told to be brief, the model ends its turn well within MAX_TOKENS (see test_instruct_chat.py).
SYSTEM = "Answer in one short sentence."
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
MAX_TOKENS = 64
GREEDY = {"temperature": 0}
TEMPLATE_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


@pytest.fixture(scope="module")
def messages_runtime(
    smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    with ready_runtime(
        smollm2_gguf,
        tmp_path_factory.mktemp("messages-runtime"),
        "--context-length", "512", "--parallel", "2", "--model-name", MODEL_NAME,
        "--api-key", API_KEY, "--max-prompt-bytes", str(MAX_PROMPT_BYTES),
    ) as runtime:  # fmt: skip
        yield runtime


@pytest.fixture(scope="module")
def client(messages_runtime: RuntimeProcess) -> anthropic.Anthropic:
    # An explicit timeout: the SDK's own one is computed from max_tokens, which some tests omit.
    return anthropic.Anthropic(
        base_url=messages_runtime.base_url, api_key=API_KEY, max_retries=0, timeout=60
    )


@pytest.fixture(scope="module")
def answer(client: anthropic.Anthropic) -> anthropic.types.Message:
    """The greedy, non-streamed answer to QUESTION that several tests compare against."""
    return client.messages.create(
        model=MODEL_NAME,
        system=SYSTEM,
        messages=QUESTION,
        max_tokens=MAX_TOKENS,
        extra_body=GREEDY,
    )


def _text(message: anthropic.types.Message) -> str:
    assert [block.type for block in message.content] == ["text"], message.content
    return message.content[0].text


def test_a_question_is_answered_and_the_turn_ends(answer: anthropic.types.Message) -> None:
    text = _text(answer)
    assert "Paris" in text, text
    assert not any(marker in text for marker in TEMPLATE_MARKERS), text
    assert answer.id.startswith("msg_")
    assert (answer.type, answer.role, answer.model) == ("message", "assistant", MODEL_NAME)
    assert (answer.stop_reason, answer.stop_sequence) == ("end_turn", None)
    assert 0 < answer.usage.output_tokens < MAX_TOKENS
    assert answer.usage.input_tokens > 0


def test_reaching_max_tokens_stops_with_max_tokens(client: anthropic.Anthropic) -> None:
    reply = client.messages.create(
        model=MODEL_NAME, system=SYSTEM, messages=QUESTION, max_tokens=2, extra_body=GREEDY
    )
    assert reply.stop_reason == "max_tokens"
    assert reply.stop_sequence is None
    assert reply.usage.output_tokens == 2


def test_a_stop_sequence_ends_the_text_before_it_and_is_named(
    client: anthropic.Anthropic, answer: anthropic.types.Message
) -> None:
    full = _text(answer)
    reply = client.messages.create(
        model=MODEL_NAME,
        system=SYSTEM,
        messages=QUESTION,
        max_tokens=MAX_TOKENS,
        stop_sequences=["no such words", "Paris"],
        extra_body=GREEDY,
    )
    assert (reply.stop_reason, reply.stop_sequence) == ("stop_sequence", "Paris")
    assert _text(reply) == full[: full.index("Paris")]
    assert reply.usage.output_tokens < answer.usage.output_tokens


def test_streaming_gives_the_same_text_and_a_final_message_with_usage(
    client: anthropic.Anthropic, answer: anthropic.types.Message
) -> None:
    with client.messages.stream(
        model=MODEL_NAME,
        system=SYSTEM,
        messages=QUESTION,
        max_tokens=MAX_TOKENS,
        extra_body=GREEDY,
    ) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(deltas) > 1, "the answer came in one piece: not streamed"
    assert "".join(deltas) == _text(answer) == _text(final)
    assert (final.stop_reason, final.stop_sequence) == ("end_turn", None)
    assert final.id.startswith("msg_")
    assert final.usage.output_tokens == answer.usage.output_tokens
    assert final.usage.input_tokens == answer.usage.input_tokens


def test_a_streamed_stop_sequence_is_named_in_message_delta(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL_NAME,
        system=SYSTEM,
        messages=QUESTION,
        max_tokens=MAX_TOKENS,
        stop_sequences=["Paris"],
        extra_body=GREEDY,
    ) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "Paris")
    assert "Paris" not in _text(final)


def test_events_come_in_anthropics_order_as_named_sse_and_x_api_key_is_accepted(
    messages_runtime: RuntimeProcess,
) -> None:
    body = {
        "model": MODEL_NAME,
        "system": SYSTEM,
        "messages": QUESTION,
        "max_tokens": 4,
        "stream": True,
        **GREEDY,
    }
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream(
        "POST",
        f"{messages_runtime.base_url}/v1/messages",
        json=body,
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                assert data["type"] == name, line
                events.append((name, data))
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"], names
    assert names[3:-3] == ["content_block_delta"] * 4, names  # one per token, greedy: 4 tokens
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"], names
    start = events[0][1]["message"]
    assert (start["content"], start["stop_reason"], start["usage"]["output_tokens"]) == (
        [],
        None,
        0,
    )
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert all(data["delta"]["type"] == "text_delta" for _, data in events[3:-3])
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"] == {"output_tokens": 4}


def test_the_system_prompt_is_rendered_as_the_templates_system_message(
    messages_runtime: RuntimeProcess, client: anthropic.Anthropic, answer: anthropic.types.Message
) -> None:
    # The same conversation through the chat completions route, system as a system message,
    # gives the same prompt and the same greedy answer; so do system text blocks.
    chat = openai.OpenAI(
        base_url=f"{messages_runtime.base_url}/v1", api_key=API_KEY, max_retries=0
    ).chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "system", "content": SYSTEM}, *QUESTION],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    assert answer.usage.input_tokens == chat.usage.prompt_tokens
    assert _text(answer) == chat.choices[0].message.content
    as_blocks = client.messages.create(
        model=MODEL_NAME,
        system=[
            {"type": "text", "text": "Answer in one "},
            {"type": "text", "text": "short sentence."},
        ],
        messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION[0]["content"]}]}],
        max_tokens=MAX_TOKENS,
        extra_body=GREEDY,
    )
    assert _text(as_blocks) == _text(answer)
    without_system = client.messages.create(
        model=MODEL_NAME, messages=QUESTION, max_tokens=2, extra_body=GREEDY
    )
    assert without_system.usage.input_tokens != answer.usage.input_tokens


def test_a_final_assistant_turn_is_continued(client: anthropic.Anthropic) -> None:
    prefill = "The capital of France is"
    reply = client.messages.create(
        model=MODEL_NAME,
        system=SYSTEM,
        messages=[*QUESTION, {"role": "assistant", "content": prefill}],
        max_tokens=MAX_TOKENS,
        extra_body=GREEDY,
    )
    text = _text(reply)
    assert "Paris" in text and not text.startswith(prefill), text
    assert reply.stop_reason == "end_turn"


def test_max_tokens_past_the_context_is_bounded_by_it(client: anthropic.Anthropic) -> None:
    # Anthropic's clients ask for far more than a small model's context: not a refusal.
    reply = client.messages.create(
        model=MODEL_NAME, system=SYSTEM, messages=QUESTION, max_tokens=8192, extra_body=GREEDY
    )
    assert reply.stop_reason == "end_turn"


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}

BAD_REQUESTS = [
    pytest.param({"max_tokens": anthropic.omit}, "max_tokens", id="missing-max-tokens"),
    pytest.param({"messages": []}, "at least one message", id="empty-messages"),
    pytest.param(
        {"messages": [{"role": "user", "content": [IMAGE]}]},
        "messages[0].content[0] is a 'image' block",
        id="image-block",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
        "'document' block",
        id="document-block",
    ),
    pytest.param({"tools": [WEATHER_TOOL]}, "has no tool support", id="tools-without-template"),
    pytest.param({"tool_choice": {"type": "any"}}, "tool_choice", id="tool-choice-without-tools"),
    pytest.param(
        {"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking", id="thinking"
    ),
    pytest.param({"extra_body": {"top_k": 5, **GREEDY}}, "top_k", id="top-k"),
    pytest.param({"extra_body": {"temperature": 1.5}}, "temperature", id="temperature-above-1"),
    pytest.param({"extra_body": {"frobnicate": True}}, "frobnicate", id="unknown-field"),
    pytest.param({"stop_sequences": [""]}, "stop_sequences[0]", id="empty-stop-sequence"),
    pytest.param(
        {"messages": [{"role": "user", "content": ""}]}, "non-empty content", id="empty-content"
    ),
    pytest.param(
        {"messages": [{"role": "system", "content": "hi"}]}, "messages[0].role", id="system-role"
    ),
]


@pytest.mark.parametrize(("change", "named"), BAD_REQUESTS)
def test_a_bad_request_is_a_400_in_anthropics_shape_naming_the_problem(
    client: anthropic.Anthropic, change: dict[str, Any], named: str
) -> None:
    request = {"model": MODEL_NAME, "messages": QUESTION, "max_tokens": 8, **change}
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(**request)
    assert refused.value.body["type"] == "error"
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    assert named in refused.value.body["error"]["message"]


def test_a_wrong_api_key_is_an_authentication_error(
    messages_runtime: RuntimeProcess, client: anthropic.Anthropic
) -> None:
    wrong = client.with_options(api_key="wrong")
    with pytest.raises(anthropic.AuthenticationError) as refused:
        wrong.messages.create(model=MODEL_NAME, messages=QUESTION, max_tokens=1)
    assert refused.value.body["error"]["type"] == "authentication_error"
    wrong_header = httpx.post(
        f"{messages_runtime.base_url}/v1/messages",
        json={"model": MODEL_NAME, "messages": QUESTION, "max_tokens": 1},
        headers={"x-api-key": "wrong"},
        timeout=10,
    )
    assert wrong_header.status_code == 401
    assert wrong_header.json()["error"]["type"] == "authentication_error"


def test_an_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as refused:
        client.messages.create(model="claude-opus-4", messages=QUESTION, max_tokens=1)
    assert refused.value.body["error"]["type"] == "not_found_error"
    assert MODEL_NAME in refused.value.body["error"]["message"]


def test_a_prompt_past_max_prompt_bytes_is_request_too_large(client: anthropic.Anthropic) -> None:
    long = [{"role": "user", "content": "word " * (MAX_PROMPT_BYTES // 4)}]
    with pytest.raises(anthropic.APIStatusError) as refused:
        client.messages.create(model=MODEL_NAME, messages=long, max_tokens=1)
    assert refused.value.status_code == 413
    assert refused.value.body["error"]["type"] == "request_too_large"
    assert "--max-prompt-bytes" in refused.value.body["error"]["message"]


def test_a_body_that_is_not_json_is_a_400_in_anthropics_shape(
    messages_runtime: RuntimeProcess,
) -> None:
    response = httpx.post(
        f"{messages_runtime.base_url}/v1/messages",
        content=b"{not json",
        headers={"x-api-key": API_KEY, "content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert set(response.json()["error"]) == {"type", "message"}
