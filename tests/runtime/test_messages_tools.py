"""Tool use in Anthropic's Messages API, through the official `anthropic` client, on SmolLM2 135M
Instruct with the shipped chatml-tools template. `any` and a named tool force the call with a
grammar, as `required` and a named function do on the OpenAI route."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import jsonschema
import pytest
from runtime_process import RuntimeProcess, launch

pytestmark = pytest.mark.runtime

MODEL_NAME = "smollm2-tools"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"name": "get_weather", "description": "The current weather in a city",
     "input_schema": WEATHER_SCHEMA},
    {"name": "get_time", "description": "The local time in a time zone",
     "input_schema": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}},
                      "required": ["zone"]}},
]  # fmt: skip
SCHEMAS = {tool["name"]: tool["input_schema"] for tool in TOOLS}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
MAX_TOKENS = 48
GREEDY = {"temperature": 0}
GET_WEATHER = {"type": "tool", "name": "get_weather"}


@pytest.fixture(scope="module")
def client(
    smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[anthropic.Anthropic]:
    runtime: RuntimeProcess = launch(
        smollm2_gguf, tmp_path_factory.mktemp("messages-tools"),
        "--context-length", "1024", "--parallel", "2", "--model-name", MODEL_NAME,
        "--chat-template", "chatml-tools",
    )  # fmt: skip
    try:
        runtime.wait_ready()
        yield anthropic.Anthropic(
            base_url=runtime.base_url, api_key="unused", max_retries=0, timeout=60
        )
    finally:
        runtime.stop()


def create(client: anthropic.Anthropic, **kwargs):
    request = {"model": MODEL_NAME, "messages": QUESTION, "max_tokens": MAX_TOKENS,
               "tools": TOOLS, "extra_body": GREEDY, **kwargs}  # fmt: skip
    return client.messages.create(**request)


@pytest.fixture(scope="module")
def weather_message(client: anthropic.Anthropic):
    """One message forced to use get_weather, shared by the tests that read such a block."""
    return create(client, tool_choice=GET_WEATHER)


@pytest.mark.parametrize(
    ("tool_choice", "names"),
    [({"type": "any"}, set(SCHEMAS)), (GET_WEATHER, {"get_weather"})],
    ids=["any", "named"],
)
def test_a_forced_tool_use_block_is_valid_against_its_input_schema(
    client: anthropic.Anthropic, weather_message, tool_choice: dict, names: set[str]
) -> None:
    forced_weather = tool_choice is GET_WEATHER
    message = weather_message if forced_weather else create(client, tool_choice=tool_choice)
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert block.name in names
    jsonschema.validate(block.input, SCHEMAS[block.name])


def test_a_streamed_tool_use_reassembles_to_the_same_block(
    client: anthropic.Anthropic, weather_message
) -> None:
    whole = weather_message.content[0]
    with client.messages.stream(
        model=MODEL_NAME, messages=QUESTION, max_tokens=MAX_TOKENS, tools=TOOLS,
        tool_choice=GET_WEATHER, extra_body=GREEDY,
    ) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        message = stream.get_final_message()
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert (block.type, block.name, block.input) == ("tool_use", whole.name, whole.input)


def test_a_tool_result_goes_back_through_the_template_and_is_answered(
    client: anthropic.Anthropic, weather_message
) -> None:
    call = weather_message.content[0]
    history = [
        *QUESTION,
        {"role": "assistant", "content": [call.model_dump()]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id,
             "content": [{"type": "text", "text": '{"temperature": 21, "sky": "clear"}'}]},
        ]},
    ]  # fmt: skip
    message = create(client, messages=history, tool_choice={"type": "none"}, max_tokens=16)
    assert message.content[0].type == "text" and message.content[0].text
    alone = create(client, tool_choice={"type": "none"}, max_tokens=1)
    assert message.usage.input_tokens > alone.usage.input_tokens + 20


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tool"),
        ({"tool_choice": {"type": "tool", "name": "nope"}}, "not among the tools"),
        ({"tools": [{"name": "bad name", "input_schema": {"type": "object"}}]}, "name"),
        ({"messages": [{"role": "user", "content": [
            {"type": "tool_use", "id": "t", "name": "get_weather", "input": {}}]}]},
         "belong in assistant messages"),
    ],
    ids=["server-tool", "unknown-tool", "bad-name", "tool-use-from-user"],
)  # fmt: skip
def test_bad_tool_use_is_a_400_naming_the_problem(
    client: anthropic.Anthropic, change: dict, named: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        create(client, **change)
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    assert named in refused.value.body["error"]["message"]
