"""Tool calls in a model's output: one parser per model family's format, picked from the chat
template (the markers it contains) or the architecture.

Formats parsed:
- `hermes`: Hermes / Qwen 2.5+ / the shipped chatml-tools template,
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any number of them.
- `llama3`: Llama 3.1+, `<|python_tag|>{"name": ..., "parameters": {...}}` (calls joined by
  `;`), or the whole answer being such a JSON object.
- `mistral`: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`, and the newer
  `[TOOL_CALLS]name[ARGS]{...}`.
- `gemma`: a fenced ```tool_code block holding a Python call `name(a=1, b="x")`, or a fenced
  ```json block holding `{"name": ..., "arguments"|"parameters": {...}}`.

Output that does not parse as a call (malformed JSON, no name, arguments not an object) stays in
the answer as text: a model's slip is never a server error.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as OpenAI's `function.arguments`
    id: str = field(default_factory=new_call_id)

    def openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class ParsedOutput:
    """An answer split into its text (None when nothing but calls) and its tool calls."""

    content: str | None
    calls: tuple[ToolCall, ...] = ()


def _call_from_object(value: Any, arguments_keys: tuple[str, ...]) -> ToolCall | None:
    """A call from `{"name": ..., <arguments key>: {...}}`, or None when it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    key = next((k for k in arguments_keys if k in value), None)
    arguments = {} if key is None else value[key]
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(value["name"], json.dumps(arguments, ensure_ascii=False))


def _json_call(text: str, arguments_keys: tuple[str, ...]) -> ToolCall | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return _call_from_object(value, arguments_keys)


def _joined(pieces: list[str]) -> str | None:
    text = "".join(pieces).strip()
    return text or None


# -- one parser per format -------------------------------------------------------------------

_HERMES_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


def parse_hermes(text: str) -> ParsedOutput:
    pieces, calls, last = [], [], 0
    for match in _HERMES_CALL.finditer(text):
        call = _json_call(match.group(1).strip(), ("arguments", "parameters"))
        if call is None:
            continue  # left in the text
        pieces.append(text[last : match.start()])
        calls.append(call)
        last = match.end()
    pieces.append(text[last:])
    return ParsedOutput(_joined(pieces), tuple(calls))


LLAMA3_PYTHON_TAG = "<|python_tag|>"


def parse_llama3(text: str) -> ParsedOutput:
    before, tag, after = text.partition(LLAMA3_PYTHON_TAG)
    if not tag:
        before, after = "", text
        if not text.lstrip().startswith("{"):
            return ParsedOutput(_joined([text]))
    calls = []
    for part in _split_top_level(after.strip(), ";"):
        call = _json_call(part, ("parameters", "arguments"))
        if call is None:
            return ParsedOutput(_joined([text]))
        calls.append(call)
    if not calls:
        return ParsedOutput(_joined([text]))
    return ParsedOutput(_joined([before]), tuple(calls))


MISTRAL_TOOL_CALLS = "[TOOL_CALLS]"
_MISTRAL_NAMED = re.compile(r"\s*([A-Za-z0-9_.-]+)\[ARGS\]")


def parse_mistral(text: str) -> ParsedOutput:
    before, tag, after = text.partition(MISTRAL_TOOL_CALLS)
    if not tag:
        return ParsedOutput(_joined([text]))
    calls = _mistral_calls(after)
    if calls is None:
        return ParsedOutput(_joined([text]))
    return ParsedOutput(_joined([before]), tuple(calls))


def _mistral_calls(text: str) -> list[ToolCall] | None:
    decoder = json.JSONDecoder()
    if text.lstrip().startswith("["):
        try:
            value, _ = decoder.raw_decode(text.lstrip())
        except ValueError:
            return None
        if not isinstance(value, list) or not value:
            return None
        calls = [_call_from_object(item, ("arguments", "parameters")) for item in value]
        return None if None in calls else calls  # type: ignore[return-value]
    calls, rest = [], text
    while rest.strip():  # name[ARGS]{...} repeated, each after its own [TOOL_CALLS]
        match = _MISTRAL_NAMED.match(rest)
        if match is None:
            return None
        try:
            arguments, end = decoder.raw_decode(rest, match.end())
        except ValueError:
            return None
        call = _call_from_object({"name": match.group(1), "arguments": arguments}, ("arguments",))
        if call is None:
            return None
        calls.append(call)
        rest = rest[end:].lstrip().removeprefix(MISTRAL_TOOL_CALLS)
    return calls or None


_GEMMA_BLOCK = re.compile(r"```(tool_code|json)\s*\n(.*?)(?:```|$)", re.DOTALL)


def parse_gemma(text: str) -> ParsedOutput:
    pieces, calls, last = [], [], 0
    for match in _GEMMA_BLOCK.finditer(text):
        kind, body = match.group(1), match.group(2).strip()
        if kind == "json":
            call = _json_call(body, ("arguments", "parameters"))
        else:
            call = _python_call(body)
        if call is None:
            continue
        pieces.append(text[last : match.start()])
        calls.append(call)
        last = match.end()
    pieces.append(text[last:])
    return ParsedOutput(_joined(pieces), tuple(calls))


def _python_call(source: str) -> ToolCall | None:
    """`get_weather(city="Paris", days=3)`: keyword arguments with literal values only."""
    try:
        node = ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError, RecursionError):
        return None
    if not isinstance(node, ast.Call) or node.args:
        return None
    name = ast.unparse(node.func)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        return None
    try:
        arguments = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    except (ValueError, SyntaxError, RecursionError):
        return None
    return _call_from_object({"name": name, "arguments": arguments}, ("arguments",))


def _split_top_level(text: str, separator: str) -> list[str]:
    """`text` split at `separator` outside JSON strings and brackets."""
    parts, depth, start, in_string, escaped = [], 0, 0, False, False
    for i, char in enumerate(text):
        if in_string:
            escaped = char == "\\" and not escaped
            if char == '"' and not escaped:
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


# -- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCallFormat:
    """How one family writes its calls: how to parse them, where a call starts and ends in a
    stream, and how a grammar wraps a forced call."""

    name: str
    parse: Callable[[str], ParsedOutput]
    starts: tuple[str, ...]  # text that opens a call
    end: str | None  # text that closes one call; None: the call runs to the end of the answer
    arguments_key: str  # the key the model writes the arguments under
    forced_open: str  # what a grammar-forced call is wrapped in
    forced_close: str
    bare_json: bool = False  # an answer that starts with "{" is a call (Llama 3)


FORMATS: dict[str, ToolCallFormat] = {
    f.name: f
    for f in (
        ToolCallFormat(
            "hermes", parse_hermes, ("<tool_call>",), "</tool_call>", "arguments",
            "<tool_call>\n", "\n</tool_call>",
        ),
        ToolCallFormat(
            "llama3", parse_llama3, (LLAMA3_PYTHON_TAG,), None, "parameters",
            "", "", bare_json=True,
        ),
        ToolCallFormat(
            "mistral", parse_mistral, (MISTRAL_TOOL_CALLS,), None, "arguments",
            MISTRAL_TOOL_CALLS + "[", "]",
        ),
        ToolCallFormat(
            "gemma", parse_gemma, ("```tool_code", "```json"), "```", "arguments",
            "```json\n", "\n```",
        ),
    )
}  # fmt: skip

# Markers a template writes when it teaches its model a format, most specific first.
_TEMPLATE_MARKERS = (
    ("<tool_call>", "hermes"),
    (MISTRAL_TOOL_CALLS, "mistral"),
    (LLAMA3_PYTHON_TAG, "llama3"),
    ("tool_code", "gemma"),
)
_ARCHITECTURE_FORMATS = (
    ("qwen", "hermes"),
    ("llama", "llama3"),
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
    ("gemma", "gemma"),
)


def format_for(template_text: str, architecture: str) -> ToolCallFormat:
    """The format this model writes: the template's markers first, then its architecture, else
    Hermes (the most common, and the shipped template's)."""
    for marker, name in _TEMPLATE_MARKERS:
        if marker in template_text:
            return FORMATS[name]
    for prefix, name in _ARCHITECTURE_FORMATS:
        if architecture.startswith(prefix):
            return FORMATS[name]
    return FORMATS["hermes"]
