"""A request's tools and tool_choice: refusals naming the field, the plan (render, parse, force),
the grammar that forces a call, and the shipped chatml-tools template's rendering."""

from __future__ import annotations

import json

import pytest
from exo_runtime.chat_template import (
    CHATML_TEMPLATE,
    ChatTemplate,
    read_override,
)
from exo_runtime.openai_api import ChatMessage, OpenAIError
from exo_runtime.request_checks import message_texts
from exo_runtime.tool_calls import FORMATS
from exo_runtime.tool_request import NO_TOOLS, plan_tools, tool_call_grammar
from hypothesis import given, settings
from hypothesis import strategies as st

TOOLS_TEMPLATE = ChatTemplate("override", read_override("chatml-tools"))
PLAIN_TEMPLATE = ChatTemplate("model", CHATML_TEMPLATE)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def plan(tools, choice, template=TOOLS_TEMPLATE, can_constrain=True):
    return plan_tools(tools, choice, template, "llama", can_constrain=can_constrain)


def test_the_shipped_template_reads_tools_and_chatml_does_not() -> None:
    assert TOOLS_TEMPLATE.supports_tools
    assert not PLAIN_TEMPLATE.supports_tools


@pytest.mark.parametrize(
    ("tools", "choice", "param", "says"),
    [
        ([WEATHER], None, "tools", "has no tool support"),
        ([{"type": "retrieval"}], None, "tools[0].type", "must be"),
        ([{"type": "function", "function": {"name": "a b"}}], None, "tools[0].function.name", ""),
        ([{"type": "function", "function": {"name": "f", "parameters": 3}}], None,
         "tools[0].function.parameters", "JSON schema"),
        ([WEATHER], "sometimes", "tool_choice", "must be"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice",
         "not among the tools"),
        ([WEATHER], {"type": "function"}, "tool_choice", "must be"),
        (None, "required", "tool_choice", "no tools"),
    ],
)  # fmt: skip
def test_bad_tools_and_tool_choice_are_refused_naming_the_field(tools, choice, param, says):
    template = PLAIN_TEMPLATE if says == "has no tool support" else TOOLS_TEMPLATE
    with pytest.raises(OpenAIError) as refused:
        plan(tools, choice, template)
    assert (refused.value.status, refused.value.param) == (400, param)
    assert says in refused.value.message


def test_a_template_without_tools_says_how_to_give_one() -> None:
    with pytest.raises(OpenAIError) as refused:
        plan([WEATHER], "auto", PLAIN_TEMPLATE)
    assert "--chat-template-file" in refused.value.message
    assert refused.value.code == "tools_unsupported"


@pytest.mark.parametrize(
    ("tools", "choice"), [(None, None), ([], "auto"), ([WEATHER], "none"), (None, "none")]
)
def test_no_tools_or_none_changes_nothing(tools, choice) -> None:
    assert plan(tools, choice, PLAIN_TEMPLATE) is NO_TOOLS


def test_auto_renders_and_parses_without_forcing() -> None:
    planned = plan([WEATHER], "auto")
    assert (planned.tools, planned.format.name, planned.grammar) == ([WEATHER], "hermes", None)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "f"}}])
def test_forcing_a_call_needs_an_engine_that_takes_a_grammar(choice) -> None:
    tools = [WEATHER, {"type": "function", "function": {"name": "f"}}]
    with pytest.raises(OpenAIError) as refused:
        plan(tools, choice, can_constrain=False)
    assert refused.value.param == "tool_choice"


def test_a_named_function_s_grammar_allows_that_function_only() -> None:
    grammar = plan([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}}).grammar
    assert grammar.startswith('root ::= "<tool_call>\\n" tool-call-json "\\n</tool_call>"\n')
    assert '\\"get_time\\"' in grammar
    assert "get_weather" not in grammar


def test_required_s_grammar_allows_any_of_the_functions() -> None:
    grammar = plan([WEATHER, TIME], "required").grammar
    assert '\\"get_time\\"' in grammar and '\\"get_weather\\"' in grammar
    assert '"\\"unit\\""' in grammar  # the parameters' schema is in the grammar


@pytest.mark.parametrize(
    ("fmt", "opens"),
    [("hermes", '"<tool_call>\\n"'), ("mistral", '"[TOOL_CALLS]["'), ("gemma", '"```json\\n"')],
)
def test_each_format_wraps_its_forced_call_its_own_way(fmt: str, opens: str) -> None:
    grammar = tool_call_grammar(FORMATS[fmt], [{"name": "f", "parameters": {"type": "object"}}])
    assert grammar.startswith(f"root ::= {opens} tool-call-json")


def test_llama3_s_forced_call_is_bare_json_with_parameters() -> None:
    grammar = tool_call_grammar(FORMATS["llama3"], [{"name": "f", "parameters": {}}])
    assert grammar.startswith("root ::= tool-call-json\n")
    assert '"\\"parameters\\""' in grammar


def test_a_tool_round_trip_renders_the_call_and_its_result() -> None:
    messages = message_texts(
        [
            ChatMessage(role="user", content="Weather in Paris?"),
            ChatMessage(
                role="assistant",
                content=None,
                tool_calls=[
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            ),
            ChatMessage(role="tool", content="22 C, sunny <b>", tool_call_id="call_1"),
        ]
    )
    prompt = TOOLS_TEMPLATE.render(messages, tools=[WEATHER])
    assert "<tools>\n" + json.dumps(WEATHER) + "\n</tools>" in prompt  # no HTML escaping
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}\n</tool_call><|im_end|>\n'
    ) in prompt
    assert "<|im_start|>user\n<tool_response>\n22 C, sunny <b>\n</tool_response><|im_end|>\n" in (
        prompt
    )
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "assistant", "tool_calls": [{"id": "1"}]},
         "messages[0].tool_calls[0].function.name"),
        ({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]},
         "messages[0].tool_calls[0].function.arguments"),
        ({"role": "user", "content": "hi", "tool_calls": [{"function": {"name": "f"}}]},
         "messages[0].tool_calls"),
    ],
)  # fmt: skip
def test_a_bad_tool_call_in_the_history_is_refused_naming_it(message: dict, param: str) -> None:
    with pytest.raises(OpenAIError) as refused:
        message_texts([ChatMessage.model_validate(message)])
    assert refused.value.param == param


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
SCHEMA_WORDS = st.sampled_from(
    ["type", "properties", "required", "items", "enum", "const", "anyOf", "$ref", "pattern",
     "minLength", "maxItems", "format", "additionalProperties", "object", "string", "integer"]
)  # fmt: skip
SCHEMAS = st.recursive(
    JSON,
    lambda inner: st.dictionaries(SCHEMA_WORDS, inner | SCHEMA_WORDS, max_size=4),
    max_leaves=16,
)
TOOL_LISTS = st.none() | st.lists(
    st.dictionaries(st.text(max_size=8), JSON, max_size=3)
    | st.fixed_dictionaries(
        {"type": st.just("function"),
         "function": st.fixed_dictionaries(
             {"name": st.sampled_from(["f", "g", "bad name", ""])},
             optional={"parameters": SCHEMAS})}
    ),
    max_size=3,
)  # fmt: skip
CHOICES = (
    st.none()
    | st.sampled_from(["none", "auto", "required", "any"])
    | st.dictionaries(st.text(max_size=8), JSON, max_size=2)
    | st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": st.text(max_size=3)}),
        }
    )
)


@settings(max_examples=300, deadline=None)
@given(tools=TOOL_LISTS, choice=CHOICES)
def test_any_tools_and_tool_choice_are_planned_and_rendered_or_refused_with_a_400(tools, choice):
    try:
        planned = plan(tools, choice)
    except OpenAIError as err:
        assert err.status == 400 and err.param
        return
    prompt = TOOLS_TEMPLATE.render([{"role": "user", "content": "hi"}], tools=planned.tools)
    assert ("<tools>" in prompt) == bool(planned.tools)
