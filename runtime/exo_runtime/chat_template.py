"""Chat templates: choose one (override > embedded in the model > built-in) and render it.

Templates are Jinja, rendered in a sandbox the way Hugging Face tokenizers do it
(`messages`, `tools`, `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`,
`tojson` without HTML escaping). Templates shipped in the package (`templates/`) are named by
`--chat-template NAME`, e.g. `chatml-tools` for a ChatML model whose own template has no tools.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
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

    @cached_property
    def supports_tools(self) -> bool:
        """The template reads `tools`: without that, tools given in a request would vanish."""
        return "tools" in jinja2.meta.find_undeclared_variables(_ENV.parse(self.text))

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text for `messages`; raise ChatTemplateError when the template refuses."""
        try:
            return _compile(self.text).render(
                messages=messages,
                tools=tools or None,
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


def _tojson(
    value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Hugging Face's tojson: Jinja's own escapes <, >, & and ' for HTML, which would put
    # "\u003c" into a prompt where the model was trained on "<".
    return json.dumps(
        value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


_ENV = _environment()
_COMPILED: dict[str, jinja2.Template] = {}


def _compile(text: str) -> jinja2.Template:
    template = _COMPILED.get(text)
    if template is None:
        try:
            template = _ENV.from_string(text)
        except jinja2.TemplateSyntaxError as err:
            raise ChatTemplateError(f"chat template does not parse: {err}") from err
        _COMPILED[text] = template
    return template


def shipped_template_names() -> list[str]:
    """The templates in the package's `templates/` folder, by the name `--chat-template` takes."""
    folder = resources.files("exo_runtime") / "templates"
    return sorted(
        entry.name.removesuffix(".jinja").replace("_", "-")
        for entry in folder.iterdir()
        if entry.name.endswith(".jinja")
    )


def shipped_template(name: str) -> str | None:
    """The text of the shipped template `name` (e.g. "chatml-tools"), or None."""
    if name not in shipped_template_names():
        return None
    entry = resources.files("exo_runtime") / "templates" / (name.replace("-", "_") + ".jinja")
    return entry.read_text(encoding="utf-8")


def read_override(value: str) -> str:
    """`--chat-template` is a file path, a shipped template's name or the template itself;
    return the template text."""
    path = Path(value)
    looks_like_template = "{{" in value or "{%" in value
    if not looks_like_template:
        try:
            return path.read_text(encoding="utf-8")
        except OSError as err:
            shipped = shipped_template(value)
            if shipped is not None:
                return shipped
            raise ChatTemplateError(
                f"--chat-template {value!r} is neither a readable file ({err.strerror}), nor a "
                f"shipped template ({', '.join(shipped_template_names())}), nor a Jinja "
                "template (no '{{' or '{%' in it)"
            ) from err
    return value


def read_template_file(path: str) -> str:
    """`--chat-template-file`: the file's text, or ChatTemplateError naming the path."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ChatTemplateError(f"--chat-template-file {path!r} cannot be read: {reason}") from err


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
