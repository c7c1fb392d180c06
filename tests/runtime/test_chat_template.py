"""Chat templates: which one is chosen, and what the Gemma one renders."""

from __future__ import annotations

from pathlib import Path

import pytest
from exo_runtime.chat_template import (
    BUILTIN_TEMPLATES,
    CHATML_TEMPLATE,
    ChatTemplate,
    ChatTemplateError,
    choose_chat_template,
)
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.runtime

GEMMA_TOKENS = {"bos_token": "<bos>", "eos_token": "<eos>"}
ECHO_TEMPLATE = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"


def choose(**kwargs):
    defaults = {
        "override": None,
        "embedded": None,
        "architecture": "gemma3",
        "special_tokens": GEMMA_TOKENS,
    }
    return choose_chat_template(**{**defaults, **kwargs})


def test_gemma_builtin_renders_turns_and_the_generation_prompt() -> None:
    template = choose()
    assert template.source == "builtin:gemma3"
    prompt = template.render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert prompt == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_builtin_refuses_turns_that_do_not_alternate() -> None:
    with pytest.raises(ChatTemplateError, match="alternate"):
        choose().render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_template_embedded_in_the_model_wins_over_the_builtin() -> None:
    template = choose(embedded=ECHO_TEMPLATE)
    assert template.source == "model"
    assert template.render([{"role": "user", "content": "x"}]) == "[user]x"


def test_override_string_wins_over_the_embedded_template() -> None:
    template = choose(override="{{ bos_token }}{{ messages[0].content }}", embedded=ECHO_TEMPLATE)
    assert template.source == "override"
    assert template.render([{"role": "user", "content": "x"}]) == "<bos>x"


def test_override_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "template.jinja"
    path.write_text(ECHO_TEMPLATE)
    template = choose(override=str(path), embedded="{{ 'embedded' }}")
    assert template.render([{"role": "user", "content": "x"}]) == "[user]x"


def test_override_that_is_neither_file_nor_template_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ChatTemplateError, match="neither a readable file"):
        choose(override=str(tmp_path / "missing.jinja"))


def test_template_that_does_not_parse_is_refused_when_chosen() -> None:
    with pytest.raises(ChatTemplateError, match="does not parse"):
        choose(override="{% for m in messages %}")


def test_template_cannot_escape_the_sandbox() -> None:
    template = choose(override="{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError):
        template.render([{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    ("architecture", "expected"),
    [
        (
            "llama",
            "<bos><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        ("qwen2", "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"),
    ],
)
def test_other_builtin_templates_render_their_format(architecture: str, expected: str) -> None:
    assert choose(architecture=architecture).render([{"role": "user", "content": "x"}]) == expected


def test_unknown_architecture_without_template_has_none() -> None:
    assert choose(architecture="mamba") is None


ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"])
MESSAGES = st.lists(st.fixed_dictionaries({"role": ROLES, "content": st.text()}), max_size=6)


@settings(max_examples=200, deadline=None)
@given(template=st.sampled_from(sorted(set(BUILTIN_TEMPLATES.values()))), messages=MESSAGES)
def test_rendering_any_messages_returns_text_or_raises_chat_template_error(
    template: str, messages: list[dict]
) -> None:
    try:
        rendered = ChatTemplate("builtin", template, "<bos>", "<eos>").render(messages)
    except ChatTemplateError:
        return
    assert isinstance(rendered, str)


@settings(max_examples=200, deadline=None)
@given(messages=MESSAGES)
def test_message_text_is_never_evaluated_as_a_template(messages: list[dict]) -> None:
    rendered = ChatTemplate("builtin:chatml", CHATML_TEMPLATE).render(messages)
    for message in messages:
        assert f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>" in rendered


@settings(max_examples=100, deadline=None)
@given(messages=MESSAGES, broken=st.sampled_from(["{{ messages[99]['x'] + 1 }}", "{{ 1 / 0 }}"]))
def test_a_template_that_trips_on_the_messages_raises_chat_template_error(
    messages: list[dict], broken: str
) -> None:
    with pytest.raises(ChatTemplateError):
        ChatTemplate("model", broken).render(messages)
