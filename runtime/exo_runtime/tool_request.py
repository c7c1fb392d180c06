"""A request's tools and tool_choice, checked and turned into a plan: what the template renders,
how the answer is parsed, and the grammar that forces a call (`required` or a named function).

Pure functions of the request, the chat template and the model's architecture; each refusal is
an OpenAIError naming the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from exo_runtime.chat_template import ChatTemplate
from exo_runtime.openai_api import OpenAIError
from exo_runtime.tool_calls import ToolCallFormat, format_for

# OpenAI's rule for function names; it also keeps a name safe inside a template's JSON text.
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CALL_RULE = "tool-call-json"


@dataclass(frozen=True)
class ToolPlan:
    """What the tools of one request change: None everywhere when it has none."""

    tools: list[dict[str, Any]] | None = None  # rendered by the template
    format: ToolCallFormat | None = None  # parse the answer's calls with it
    grammar: str | None = None  # GBNF (root `root`) that forces one call


NO_TOOLS = ToolPlan()


def plan_tools(
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    template: ChatTemplate,
    architecture: str,
    *,
    can_constrain: bool,
) -> ToolPlan:
    """Check `tools` and `tool_choice` (OpenAI's shapes) and plan how to honour them.

    `can_constrain`: the engine applies a grammar per sequence (needed by required/named)."""
    functions = [_function(tool, i) for i, tool in enumerate(tools or ())]
    choice = _choice(tool_choice, functions)
    if not functions or choice == "none":
        return NO_TOOLS
    if not template.supports_tools:
        raise OpenAIError(
            400,
            f"tools: the model's chat template ({template.source}) has no tool support (it never "
            "reads `tools`), so the tools would not reach the model; start the runtime with a "
            "template that has, e.g. --chat-template-file PATH, or --chat-template chatml-tools "
            "for a ChatML model",
            param="tools",
            code="tools_unsupported",
        )
    fmt = format_for(template.text, architecture)
    if choice == "auto":
        return ToolPlan(tools=tools, format=fmt)
    if not can_constrain:
        raise OpenAIError(
            400,
            "tool_choice: the engine serving this model cannot constrain its output with a "
            'grammar, which "required" and a named function need; use "auto" or "none"',
            param="tool_choice",
            code="unsupported_parameter",
        )
    forced = functions if choice == "required" else [f for f in functions if f["name"] == choice]
    return ToolPlan(tools=tools, format=fmt, grammar=tool_call_grammar(fmt, forced))


def _function(tool: Any, i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise OpenAIError(
            400, f'{where}.type must be "function"', param=f"{where}.type", code="invalid_value"
        )
    function = tool.get("function")
    if not isinstance(function, dict):
        raise OpenAIError(
            400, f"{where}.function is missing", param=f"{where}.function", code="invalid_value"
        )
    name = function.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
        raise OpenAIError(
            400,
            f"{where}.function.name must be 1 to 64 letters, digits, underscores or dashes",
            param=f"{where}.function.name",
            code="invalid_value",
        )
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict):
        raise OpenAIError(
            400,
            f"{where}.function.parameters must be a JSON schema object",
            param=f"{where}.function.parameters",
            code="invalid_value",
        )
    return {"name": name, "parameters": parameters}


def _choice(tool_choice: str | dict[str, Any] | None, functions: list[dict[str, Any]]) -> str:
    """ "none", "auto", "required" or the name of the function to call."""
    if tool_choice is None:
        return "auto" if functions else "none"
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise OpenAIError(
                400,
                f'tool_choice must be "none", "auto", "required" or {{"type": "function", '
                f'"function": {{"name": ...}}}}, not {tool_choice!r}',
                param="tool_choice",
                code="invalid_value",
            )
        if tool_choice == "required" and not functions:
            raise OpenAIError(
                400,
                'tool_choice is "required" but no tools are given',
                param="tool_choice",
                code="invalid_value",
            )
        return tool_choice
    function = tool_choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if tool_choice.get("type") != "function" or not isinstance(name, str):
        raise OpenAIError(
            400,
            'tool_choice must be {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
            code="invalid_value",
        )
    if name not in {f["name"] for f in functions}:
        raise OpenAIError(
            400,
            f"tool_choice names the function {name!r}, which is not among the tools",
            param="tool_choice",
            code="invalid_value",
        )
    return name


def tool_call_schema(fmt: ToolCallFormat, functions: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON schema of one call to any of `functions`, written the way `fmt` writes it."""
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": f["name"]},
                fmt.arguments_key: f["parameters"],
            },
            "required": ["name", fmt.arguments_key],
            "additionalProperties": False,
        }
        for f in functions
    ]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def tool_call_grammar(fmt: ToolCallFormat, functions: list[dict[str, Any]]) -> str:
    """GBNF (start rule `root`) for exactly one call to one of `functions`, in `fmt`'s wrapper."""
    # Imported here: importing llama_cpp loads its library, which no other tool request needs.
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = tool_call_schema(fmt, functions)
    try:
        call = json_schema_to_gbnf(json.dumps(schema), prop_order=["name", fmt.arguments_key])
    except Exception as err:  # the converter raises bare exceptions on schemas it cannot read
        raise OpenAIError(
            400,
            f"tools: a function's parameters cannot be turned into a grammar: {err}",
            param="tools",
            code="invalid_value",
        ) from err
    call = re.sub(r"^root ::=", f"{_CALL_RULE} ::=", call, flags=re.MULTILINE)
    wrapped = " ".join(
        part for part in (_literal(fmt.forced_open), _CALL_RULE, _literal(fmt.forced_close)) if part
    )
    return f"root ::= {wrapped}\n{call}\n"


def _literal(text: str) -> str:
    if not text:
        return ""
    return json.dumps(text)  # GBNF string literals escape like JSON's


def template_tool_fields(message: Any, i: int) -> dict[str, Any]:
    """What a template reads of a message besides its text: an assistant's `tool_calls` (their
    arguments as objects, as Hugging Face templates expect them) and a tool result's id."""
    fields: dict[str, Any] = {}
    extra = message.model_extra or {}
    for key in ("tool_call_id", "name"):
        if isinstance(extra.get(key), str):
            fields[key] = extra[key]
    if not message.tool_calls:
        return fields
    where = f"messages[{i}].tool_calls"
    if message.role != "assistant":
        raise OpenAIError(
            400, f"{where}: only assistant messages hold tool calls", param=where,
            code="invalid_value",
        )  # fmt: skip
    fields["tool_calls"] = [_template_call(call, f"{where}[{j}]")
                            for j, call in enumerate(message.tool_calls)]  # fmt: skip
    return fields


def _template_call(call: dict[str, Any], where: str) -> dict[str, Any]:
    function = call.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
        raise OpenAIError(
            400,
            f"{where}.function.name must be 1 to 64 letters, digits, underscores or dashes",
            param=f"{where}.function.name",
            code="invalid_value",
        )
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            arguments = None
    if not isinstance(arguments, dict):
        raise OpenAIError(
            400,
            f"{where}.function.arguments must be a JSON object (as a string)",
            param=f"{where}.function.arguments",
            code="invalid_value",
        )
    out = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out
