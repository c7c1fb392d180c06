"""Streaming tool calls: text streams as it comes, each call goes out as OpenAI's deltas once it
is whole, and the deltas reassemble to what the whole-answer parser finds."""

from __future__ import annotations

import json

import pytest
from exo_runtime.tool_calls import FORMATS
from exo_runtime.tool_stream import ToolCallStream

ANSWERS = [
    ("hermes",
     'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
     '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'),
    ("hermes", "No tools needed: 2 < 3 and <b>bold</b> stays text."),
    ("hermes", '<tool_call>\n{"name": "broken", "arguments": {\n</tool_call> after'),
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris"}}'),
    ("llama3", '  Sure: {"name": "x"} is just text here.'),
    ("mistral", 'Ok. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'),
    ("gemma", 'Checking.\n```tool_code\nget_weather(city="Paris")\n```\nDone.'),
]  # fmt: skip


def _stream(fmt: str, text: str, piece: int) -> tuple[str, list[dict], list[dict]]:
    """Feed `text` in pieces of `piece` characters; return content, calls and every delta."""
    stream = ToolCallStream(FORMATS[fmt])
    deltas = []
    for i in range(0, len(text), piece):
        deltas += stream.feed(text[i : i + piece]).openai()
    deltas += stream.finish().openai()
    content = "".join(d.get("content", "") for d in deltas)
    calls: dict[int, dict] = {}
    for delta in deltas:
        for part in delta.get("tool_calls", ()):
            call = calls.setdefault(part["index"], {"name": "", "arguments": ""})
            if "id" in part:
                assert part["type"] == "function" and part["id"].startswith("call_")
                call["id"] = part["id"]
            call["name"] += part["function"].get("name", "")
            call["arguments"] += part["function"].get("arguments", "")
    return content, [calls[i] for i in sorted(calls)], deltas


@pytest.mark.parametrize("piece", [1, 3, 1000])
@pytest.mark.parametrize(("fmt", "text"), ANSWERS)
def test_streamed_deltas_reassemble_to_the_whole_answer_s_parse(fmt, text, piece) -> None:
    whole = FORMATS[fmt].parse(text)
    content, calls, _ = _stream(fmt, text, piece)
    assert (content or None) == whole.content
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        (c.name, json.loads(c.arguments)) for c in whole.calls
    ]


def test_a_call_s_name_comes_before_its_arguments_and_text_is_not_held_back() -> None:
    text = 'Hello there <tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>'
    stream = ToolCallStream(FORMATS["hermes"])
    assert stream.feed("Hello there <tool").content == "Hello there"  # "<tool" may open a call
    deltas = stream.feed(text[len("Hello there <tool") :]).openai()
    assert deltas[0]["tool_calls"][0]["function"] == {"name": "f", "arguments": ""}
    assert deltas[1]["tool_calls"][0]["function"] == {"arguments": '{"a": 1}'}
    assert stream.finish().openai() == []
