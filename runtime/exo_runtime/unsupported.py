"""The OpenAI fields this runtime does not implement yet, refused only when they ask for something.

One table for every engine and one per engine, so that they shrink as features land: each row
names the field and says when a value asks for something the runtime would silently not do. A
field given its neutral value (`n: 1`, `logprobs: false`, `functions: []`) is accepted, as OpenAI
accepts it.
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


def _function_call(value: Any) -> bool:
    # "auto" is harmless while no functions are given (non-empty functions are refused).
    return value is not None and value not in ("none", "auto")


def _not_text_only(value: Any) -> bool:
    return value is not None and list(value) != ["text"]


def _asks_logprobs(value: Any) -> bool:
    return value is not None and value is not False


UNSUPPORTED: tuple[Unsupported, ...] = (
    Unsupported("best_of", _above_one, "best_of"),
    Unsupported("suffix", _truthy, "a suffix (insertion)"),
    # The legacy function calling that `tools` replaced; tools are served (tool_request.py).
    Unsupported("functions", _truthy, "legacy function calls (use tools)"),
    Unsupported("function_call", _function_call, "legacy function calls (use tool_choice)"),
    Unsupported("audio", _given, "audio output"),
    Unsupported("modalities", _not_text_only, "output other than text"),
    Unsupported("prediction", _given, "predicted outputs"),
    Unsupported("web_search_options", _given, "web search"),
    Unsupported("reasoning_effort", _given, "reasoning effort (not a reasoning model)"),
    Unsupported("verbosity", _given, "verbosity"),
    Unsupported("moderation", _given, "moderation"),
    Unsupported("store", _truthy, "storing completions"),
)


# What the llama.cpp engine honours and another engine does not (mlx-lm's BatchGenerator gives
# no log probabilities, no shared prompt between sequences and no per-sequence grammar).
ENGINE_UNSUPPORTED: dict[str, tuple[Unsupported, ...]] = {
    "mlx": (
        Unsupported("n", _above_one, "more than one choice per request"),
        Unsupported("logprobs", _asks_logprobs, "log probabilities"),
        Unsupported("top_logprobs", _non_zero, "log probabilities"),
        Unsupported("response_format", _not_text_format, "structured output (response_format)"),
        Unsupported("grammar", _given, "grammar-constrained sampling"),
    ),
}


def _first_asking(body: BaseModel, rows: tuple[Unsupported, ...]) -> Unsupported | None:
    fields = type(body).model_fields
    return next((r for r in rows if r.field in fields and r.asks(getattr(body, r.field))), None)


def refuse_unsupported(body: BaseModel) -> None:
    """Raise a 400 naming the first field that asks for something no engine implements."""
    row = _first_asking(body, UNSUPPORTED)
    if row is not None:
        raise OpenAIError(
            400,
            f"{row.field}: this server does not support {row.what} yet; leave {row.field} out",
            param=row.field,
            code="unsupported_parameter",
        )


def refuse_unsupported_by_engine(body: BaseModel, engine: str) -> None:
    """Raise a 400 naming the first field that asks for something `engine` does not do."""
    row = _first_asking(body, ENGINE_UNSUPPORTED.get(engine, ()))
    if row is not None:
        raise OpenAIError(
            400,
            f"{row.field}: the {engine} engine serving this model does not support {row.what}; "
            f"leave {row.field} out",
            param=row.field,
            code="unsupported_parameter",
        )
