"""Tool-call parsers, one per model family, on answers written the way each family writes them;
malformed calls stay in the text."""

from __future__ import annotations

import json

import pytest
from exo_runtime.tool_calls import FORMATS, format_for
from hypothesis import given, settings
from hypothesis import strategies as st

WEATHER = {"city": "Paris", "unit": "celsius"}

# (format, the model's answer, expected content, expected [(name, arguments)])
WELL_FORMED = [
    ("hermes",
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
     "</tool_call>",
     None, [("get_weather", WEATHER)]),
    ("hermes",
     "Let me look that up.\n<tool_call>\n"
     '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n'
     '<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>',
     "Let me look that up.", [("get_weather", WEATHER), ("get_time", {"tz": "Europe/Paris"})]),
    ("hermes",  # cut before its closing tag (a stop string, max_tokens at the very end)
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
     None, [("get_weather", WEATHER)]),
    ("hermes",  # arguments written as a JSON string
     '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>', None, [("f", {"x": 1})]),
    ("llama3",
     '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
     None, [("get_weather", WEATHER)]),
    ("llama3",
     '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
     None, [("get_weather", WEATHER)]),
    ("llama3",
     '<|python_tag|>{"name": "a", "parameters": {"s": "x;y"}}; {"name": "b", "parameters": {}}',
     None, [("a", {"s": "x;y"}), ("b", {})]),
    ("mistral",
     '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]',
     None, [("get_weather", WEATHER)]),
    ("mistral",
     '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}'
     '[TOOL_CALLS]get_time[ARGS]{}',
     None, [("get_weather", WEATHER), ("get_time", {})]),
    ("gemma",
     'I will check.\n```tool_code\nget_weather(city="Paris", unit="celsius")\n```',
     "I will check.", [("get_weather", WEATHER)]),
    ("gemma",
     '```json\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n```',
     None, [("get_weather", WEATHER)]),
]  # fmt: skip

MALFORMED = [
    ("hermes", "The capital of France is Paris."),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par\n</tool_call>'),
    ("hermes", '<tool_call>{"arguments": {"city": "Paris"}}</tool_call>'),  # no name
    ("hermes", '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>'),  # not an object
    ("hermes", "<tool_call></tool_call>"),
    ("llama3", '{"name": "get_weather", "parameters": {"city": '),
    ("llama3", "{not json at all}"),
    ("llama3", '<|python_tag|>print("hi")'),
    ("mistral", "[TOOL_CALLS][]"),
    ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {"x": }}]'),
    ("mistral", "[TOOL_CALLS]get_weather[ARGS]{oops"),
    ("gemma", "```tool_code\nimport os; os.system('x')\n```"),
    ("gemma", "```tool_code\nget_weather(city=open('/etc/passwd'))\n```"),
    ("gemma", "```json\n[1, 2, 3]\n```"),
]


def _calls(parsed) -> list[tuple[str, dict]]:
    return [(call.name, json.loads(call.arguments)) for call in parsed.calls]


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), WELL_FORMED)
def test_each_family_s_calls_are_parsed_with_their_arguments(fmt, text, content, calls) -> None:
    parsed = FORMATS[fmt].parse(text)
    assert _calls(parsed) == calls
    assert parsed.content == content
    assert all(call.id.startswith("call_") for call in parsed.calls)
    assert len({call.id for call in parsed.calls}) == len(parsed.calls)


@pytest.mark.parametrize(("fmt", "text"), MALFORMED)
def test_output_that_is_not_a_call_stays_as_the_answer_s_text(fmt, text) -> None:
    parsed = FORMATS[fmt].parse(text)
    assert parsed.calls == ()
    assert parsed.content == text.strip()


@pytest.mark.parametrize(
    ("template", "architecture", "expected"),
    [
        ("...<tool_call>\\n{...}</tool_call>...", "llama", "hermes"),
        ("{{ '[TOOL_CALLS]' }}", "llama", "mistral"),
        ("{{- '<|python_tag|>' + tool_call.name }}", "qwen2", "llama3"),
        ("```tool_code", "llama", "gemma"),
        ("no markers", "qwen2", "hermes"),
        ("no markers", "llama", "llama3"),
        ("no markers", "mistral", "mistral"),
        ("no markers", "gemma3", "gemma"),
        ("no markers", "phi3", "hermes"),
    ],
)
def test_the_format_comes_from_the_template_then_the_architecture(
    template: str, architecture: str, expected: str
) -> None:
    assert format_for(template, architecture).name == expected


PIECES = st.sampled_from(
    ["<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "[ARGS]", "```tool_code\n",
     "```json\n", "```", '{"name": "f", ', '"arguments": ', '"parameters": ', "{", "}", "[", "]",
     ";", '"', "\\", "f(", "x=1", ")", "\n", " ", "text"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    pieces=st.lists(PIECES | st.text(max_size=4), max_size=24), fmt=st.sampled_from(list(FORMATS))
)
def test_any_output_parses_to_text_and_calls_without_raising(pieces: list[str], fmt: str) -> None:
    text = "".join(pieces)
    parsed = FORMATS[fmt].parse(text)
    for call in parsed.calls:
        assert isinstance(json.loads(call.arguments), dict) and call.name
    if not parsed.calls:
        assert parsed.content == (text.strip() or None)
