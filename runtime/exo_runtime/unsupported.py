"""The OpenAI fields this runtime does not implement yet, refused only when they ask for something.

One table, so that it shrinks as features land: each row names the field and says when a value
asks for something the runtime would silently not do. A field given its neutral value (`n: 1`,
`logprobs: false`, `tools: []`) is accepted, as OpenAI accepts it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from exo_runtime.openai_api import OpenAIError


@dataclass(frozen=True)
class Unsupported:
    field: str
    asks: Callable[[Any], bool]  # True when the value asks for what the runtime does not do
    what: str


def _given(value: Any) -> bool:
    return value is not None


def _truthy(value: Any) -> bool:
    return bool(value)


def _above_one(value: Any) -> bool:
    return value is not None and value > 1


def _non_zero(value: Any) -> bool:
    return value is not None and value != 0


def _not_text_format(value: Any) -> bool:
    return value is not None and value.get("type") != "text"


def _tool_choice(value: Any) -> bool:
    # "auto" is harmless while no tools are given (non-empty tools are refused on their own).
    return value is not None and value not in ("none", "auto")


def _not_text_only(value: Any) -> bool:
    return value is not None and list(value) != ["text"]


UNSUPPORTED: tuple[Unsupported, ...] = (
    Unsupported("n", _above_one, "more than one choice per request"),
    Unsupported("best_of", _above_one, "best_of"),
    Unsupported("echo", _truthy, "echoing the prompt"),
    Unsupported("suffix", _truthy, "a suffix (insertion)"),
    Unsupported("logprobs", lambda v: v is not None and v is not False, "log probabilities"),
    Unsupported("top_logprobs", _non_zero, "log probabilities"),
    Unsupported("logit_bias", _truthy, "logit bias"),
    Unsupported("presence_penalty", _non_zero, "a presence penalty"),
    Unsupported("frequency_penalty", _non_zero, "a frequency penalty"),
    Unsupported("response_format", _not_text_format, "structured output (response_format)"),
    Unsupported("tools", _truthy, "tool calls"),
    Unsupported("functions", _truthy, "function calls"),
    Unsupported("tool_choice", _tool_choice, "tool calls"),
    Unsupported("function_call", _tool_choice, "function calls"),
    Unsupported("audio", _given, "audio output"),
    Unsupported("modalities", _not_text_only, "output other than text"),
    Unsupported("prediction", _given, "predicted outputs"),
    Unsupported("web_search_options", _given, "web search"),
    Unsupported("reasoning_effort", _given, "reasoning effort (not a reasoning model)"),
    Unsupported("verbosity", _given, "verbosity"),
    Unsupported("moderation", _given, "moderation"),
    Unsupported("store", _truthy, "storing completions"),
)


def refuse_unsupported(body: BaseModel) -> None:
    """Raise a 400 naming the first field that asks for something not implemented."""
    for row in UNSUPPORTED:
        if row.field in type(body).model_fields and row.asks(getattr(body, row.field)):
            raise OpenAIError(
                400,
                f"{row.field}: this server does not support {row.what} yet; leave {row.field} out",
                param=row.field,
                code="unsupported_parameter",
            )
