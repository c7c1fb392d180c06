"""Anthropic's tool use mapped onto the template's shapes: tools, tool_choice, tool_use and
tool_result blocks."""

from __future__ import annotations

import pytest
from exo_runtime.messages_api import (
    MessagesBody,
    conversation,
    openai_tool_choice,
    openai_tools,
)
from exo_runtime.openai_api import OpenAIError

WEATHER = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}


def body(messages: list[dict]) -> MessagesBody:
    return MessagesBody.model_validate({"model": "m", "max_tokens": 8, "messages": messages})


def test_client_tools_become_function_tools() -> None:
    assert openai_tools([WEATHER]) == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object"},
                "description": "Weather",
            },
        }
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "any", "disable_parallel_tool_use": True}, "required"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
        (None, None),
    ],
)
def test_tool_choice_maps_to_openai_s(choice, expected) -> None:
    assert openai_tool_choice(choice) == expected


def test_a_tool_use_and_its_result_become_a_call_and_a_tool_turn() -> None:
    turns = conversation(
        body(
            [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21 C"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "is_error": True,
                            "content": [{"type": "text", "text": "timeout"}],
                        },
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
            ]
        )
    )
    assert turns == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": "21 C", "tool_call_id": "toolu_1"},
        {"role": "tool", "content": "Error: timeout", "tool_call_id": "toolu_2"},
        {"role": "user", "content": "And tomorrow?"},
    ]


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
         "messages[0].content[0]"),
        ({"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]},
         "messages[0].content[0]"),
        ({"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "a b", "input": {}}]},
         "messages[0].content[0].name"),
        ({"role": "user", "content": [{"type": "tool_result", "content": "x"}]},
         "messages[0].content[0].tool_use_id"),
        ({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image"}]}]},
         "messages[0].content[0].content[0]"),
    ],
)  # fmt: skip
def test_misplaced_or_incomplete_tool_blocks_are_refused_naming_them(message, param) -> None:
    with pytest.raises(OpenAIError) as refused:
        conversation(body([message]))
    assert refused.value.param == param
