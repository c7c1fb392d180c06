"""Tool calls through the official `openai` client, on SmolLM2 135M Instruct with the shipped
chatml-tools template (`--chat-template-file`): its own ChatML template has no tools.

A model this small rarely calls a tool on its own; `required` and a named function force the call
with a grammar, so the call is valid whatever the model would have said.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import jsonschema
import openai
import pytest
from runtime_process import RuntimeProcess, ready_runtime

pytestmark = pytest.mark.runtime

MODEL_NAME = "smollm2-tools"
TOOLS_TEMPLATE = resources.files("exo_runtime") / "templates" / "chatml_tools.jinja"
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a time zone",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string", "maxLength": 40}},
                "required": ["zone"],
            },
        },
    },
]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
# A forced call of this schema fits well within this; an answer after a tool result is cut short.
MAX_TOKENS = 48
GET_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


def _serve(model: Path, log_dir: Path, *args: str) -> Iterator[RuntimeProcess]:
    with ready_runtime(
        model, log_dir, "--context-length", "1024", "--parallel", "2",
        "--model-name", MODEL_NAME, *args,
    ) as runtime:  # fmt: skip
        yield runtime


@pytest.fixture(scope="module")
def tools_runtime(
    smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    with resources.as_file(TOOLS_TEMPLATE) as template:
        yield from _serve(
            smollm2_gguf, tmp_path_factory.mktemp("tools"), "--chat-template-file", str(template)
        )


@pytest.fixture(scope="module")
def client(tools_runtime: RuntimeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tools_runtime.base_url}/v1", api_key="unused", max_retries=0)


def ask(client: openai.OpenAI, **kwargs):
    request = {"model": MODEL_NAME, "messages": QUESTION, "max_tokens": MAX_TOKENS,
               "temperature": 0, "tools": TOOLS, **kwargs}  # fmt: skip
    return client.chat.completions.create(**request)


def test_the_template_file_replaces_the_model_s_own(tools_runtime: RuntimeProcess) -> None:
    assert "chat template: override" in tools_runtime.log()


@pytest.fixture(scope="module")
def weather_reply(client: openai.OpenAI):
    """One answer forced to call get_weather, for the tests that read such a call (each forced
    call prefills the ~290-token tools prompt: sharing it keeps the module fast)."""
    return ask(client, tool_choice=GET_WEATHER)


@pytest.mark.parametrize(
    ("tool_choice", "names"),
    [("required", set(SCHEMAS)), (GET_WEATHER, {"get_weather"})],
    ids=["required", "named"],
)
def test_a_forced_call_is_valid_against_its_function_s_schema(
    client: openai.OpenAI, weather_reply, tool_choice, names: set[str]
) -> None:
    reply = weather_reply if tool_choice is GET_WEATHER else ask(client, tool_choice=tool_choice)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_a_streamed_call_reassembles_to_the_same_call(client: openai.OpenAI, weather_reply) -> None:
    whole = weather_reply.choices[0].message.tool_calls[0]
    calls: dict[int, dict] = {}
    finish, content = None, ""
    for event in ask(client, tool_choice=GET_WEATHER, stream=True):
        for choice in event.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for part in choice.delta.tool_calls or ():
                call = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = part.id or call["id"]
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
    assert finish == "tool_calls"
    assert content == ""
    (call,) = calls.values()
    assert call["id"].startswith("call_")
    assert (call["name"], json.loads(call["arguments"])) == (
        whole.function.name,
        json.loads(whole.function.arguments),
    )


def test_a_tool_result_goes_back_through_the_template_and_is_answered(
    client: openai.OpenAI, weather_reply
) -> None:
    call = weather_reply.choices[0].message.tool_calls[0]
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    reply = ask(client, messages=history, tool_choice="none", max_tokens=16)
    choice = reply.choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content
    # The call and its result were rendered: the prompt is longer than the question alone.
    alone = ask(client, tool_choice="none", max_tokens=1)
    assert reply.usage.prompt_tokens > alone.usage.prompt_tokens + 20


def test_auto_answers_with_text_or_valid_calls(client: openai.OpenAI) -> None:
    choice = ask(client, tool_choice="auto", max_tokens=24).choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            assert call.function.name in SCHEMAS
            json.loads(call.function.arguments)
    else:
        assert choice.message.content
        assert "<tool_call>" not in choice.message.content or choice.finish_reason == "length"


@pytest.fixture(scope="module")
def plain_client(
    smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    for runtime in _serve(smollm2_gguf, tmp_path_factory.mktemp("plain")):
        yield openai.OpenAI(base_url=f"{runtime.base_url}/v1", api_key="unused", max_retries=0)


def test_a_template_without_tools_refuses_them_saying_how_to_give_one(
    plain_client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        ask(plain_client)
    error = refused.value.body
    assert error["param"] == "tools" and error["code"] == "tools_unsupported"
    assert "no tool support" in error["message"] and "--chat-template-file" in error["message"]


def test_tool_choice_none_needs_no_tool_support(plain_client: openai.OpenAI) -> None:
    choice = ask(plain_client, tool_choice="none", max_tokens=4).choices[0]
    assert choice.message.tool_calls is None
