"""Chat templates: choose one (override > embedded in the model > built-in) and render it.

Templates are Jinja, rendered in a sandbox the way Hugging Face tokenizers do it
(`messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The template cannot be found, parsed or rendered for these messages."""


# Gemma has no system role: a system message is folded into the first user turn, and the
# assistant's turns are called "model".
GEMMA_TEMPLATE = """{{ bos_token }}
{%- if messages and messages[0]['role'] == 'system' -%}
  {%- set system_prefix = messages[0]['content'] + '\n\n' -%}
  {%- set turns = messages[1:] -%}
{%- else -%}
  {%- set system_prefix = '' -%}
  {%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{ raise_exception('Gemma needs turns that alternate user/assistant, starting with user') }}
  {%- endif -%}
  {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
  {{ '<start_of_turn>' + role + '\n' + (system_prefix if loop.first else '')
     + (message['content'] | trim) + '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"""

LLAMA3_TEMPLATE = """{{ bos_token }}
{%- for message in messages -%}
  {{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'
     + (message['content'] | trim) + '<|eot_id|>' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif -%}"""

CHATML_TEMPLATE = """{%- for message in messages -%}
  {{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"""

# GGUF `general.architecture` -> the template its instruction-tuned models use.
BUILTIN_TEMPLATES = {
    "gemma": GEMMA_TEMPLATE,
    "gemma2": GEMMA_TEMPLATE,
    "gemma3": GEMMA_TEMPLATE,
    "gemma3n": GEMMA_TEMPLATE,
    "llama": LLAMA3_TEMPLATE,
    "llama3": LLAMA3_TEMPLATE,
    "qwen": CHATML_TEMPLATE,
    "qwen2": CHATML_TEMPLATE,
    "qwen3": CHATML_TEMPLATE,
    "chatml": CHATML_TEMPLATE,
}


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled template and where it came from ("override", "model", "builtin:gemma3")."""

    source: str
    text: str
    bos_token: str = ""
    eos_token: str = ""

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages`; raise ChatTemplateError when the template refuses."""
        try:
            return _compile(self.text).render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except ChatTemplateError:
            raise
        except Exception as err:
            # A model's own template may trip on messages it did not expect (a TypeError, a
            # missing key): that is these messages refused, not a server fault.
            raise ChatTemplateError(
                f"chat template ({self.source}) failed: {type(err).__name__}: {err}"
            ) from err


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


_COMPILED: dict[str, jinja2.Template] = {}


def _compile(text: str) -> jinja2.Template:
    template = _COMPILED.get(text)
    if template is None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            template = env.from_string(text)
        except jinja2.TemplateSyntaxError as err:
            raise ChatTemplateError(f"chat template does not parse: {err}") from err
        _COMPILED[text] = template
    return template


def read_override(value: str) -> str:
    """`--chat-template` is a file path or the template itself; return the template text."""
    path = Path(value)
    looks_like_template = "{{" in value or "{%" in value
    if not looks_like_template:
        try:
            return path.read_text(encoding="utf-8")
        except OSError as err:
            raise ChatTemplateError(
                f"--chat-template {value!r} is neither a readable file ({err.strerror}) nor a "
                "Jinja template (no '{{' or '{%' in it)"
            ) from err
    return value


def choose_chat_template(
    *,
    override: str | None,
    embedded: str | None,
    architecture: str,
    special_tokens: dict[str, str],
) -> ChatTemplate | None:
    """Pick the template: override > the model's own > built-in for its architecture > None."""
    bos = special_tokens.get("bos_token", "")
    eos = special_tokens.get("eos_token", "")
    if override:
        chosen = ChatTemplate("override", read_override(override), bos, eos)
    elif embedded:
        chosen = ChatTemplate("model", embedded, bos, eos)
    elif architecture in BUILTIN_TEMPLATES:
        chosen = ChatTemplate(f"builtin:{architecture}", BUILTIN_TEMPLATES[architecture], bos, eos)
    else:
        return None
    _compile(chosen.text)  # a template that does not parse is refused at start, not per request
    return chosen
