"""Checks a body passes before it reaches the engine; each failure is a 4xx naming the field.

Pure functions of the body (and the vocabulary size and limits): nothing here touches the engine,
so they run on a worker thread, off the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from exo_runtime.openai_api import ChatMessage, OpenAIError
from exo_runtime.tool_request import template_tool_fields

Body = TypeVar("Body", bound=BaseModel)

# pydantic names the member of a union that failed ("list[int]", "function-after[...]") in an
# error's location; the parameter a client knows has none of these.
_UNION_TAGS = ("str", "int", "float", "bool", "dict", "list", "none")


def parse_body(raw: bytes, model: type[Body]) -> Body:
    """The validated body, or a 400 naming what is wrong with it."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise OpenAIError(
            400, f"the request body is not valid JSON: {err}", code="invalid_json"
        ) from err
    if not isinstance(data, dict):
        raise OpenAIError(400, "the request body must be a JSON object", code="invalid_value")
    check_encodable(data)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise validation_error(err.errors()) from err
    except RecursionError as err:
        raise OpenAIError(
            400, "the request body is nested too deeply", code="invalid_value"
        ) from err


def param_path(loc: Sequence[str | int]) -> str | None:
    """`("messages", 0, "content")` -> `messages[0].content`, as OpenAI names parameters."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif (part == "body" and not path) or "[" in part or part in _UNION_TAGS:
            continue
        else:
            path += f".{part}" if path else part
    return path or None


def validation_error(errors: Sequence[Any]) -> OpenAIError:
    first = errors[0] if errors else {}
    param = param_path(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return OpenAIError(400, "the request body is not valid JSON", code="invalid_json")
    if first.get("type") == "extra_forbidden":
        return OpenAIError(
            400,
            f"Unrecognized request argument supplied: {param}",
            param=param,
            code="unknown_parameter",
        )
    message = first.get("msg", "invalid request")
    return OpenAIError(
        400, f"{param}: {message}" if param else message, param=param, code="invalid_value"
    )


def check_encodable(data: Any) -> None:
    """Refuse strings that cannot be UTF-8 (lone surrogates such as "\\ud800"), naming the field."""
    pending: list[tuple[Any, str]] = [(data, "")]
    while pending:  # a loop, not recursion: a hostile body may nest deeply
        value, path = pending.pop()
        if isinstance(value, str):
            _check_string(value, path)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_string(key, path or "body")
                pending.append((item, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            pending.extend((item, f"{path}[{i}]") for i, item in enumerate(value))


def _check_string(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise OpenAIError(
            400,
            f"{path}: the text holds a character that is not valid Unicode "
            f"({err.reason} at position {err.start}), such as a lone surrogate escape",
            param=path,
            code="invalid_encoding",
        ) from err


def check_token_ids(ids: Sequence[int], vocab_size: int, param: str) -> None:
    """Every id must name a token of the model's vocabulary."""
    for i, token in enumerate(ids):
        if not 0 <= token < vocab_size:
            raise OpenAIError(
                400,
                f"{param}[{i}] is token id {token}, but the model's vocabulary holds ids 0 to "
                f"{vocab_size - 1}",
                param=param,
                code="invalid_token_id",
            )


def check_size(n_bytes: int, limit: int, param: str) -> None:
    """Refuse text past `limit` bytes before spending time on templates and tokenizing."""
    if n_bytes > limit:
        raise OpenAIError(
            413,
            f"{param} is {n_bytes} bytes; this server takes at most {limit} (--max-prompt-bytes)",
            param=param,
            code="prompt_too_large",
        )


def message_texts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as a template wants them: role and text (only text content parts), and
    their tool calls and tool results' ids."""
    rendered = []
    for i, message in enumerate(messages):
        content = message.content
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            pieces = []
            for j, part in enumerate(content):
                if part.type != "text":
                    raise OpenAIError(
                        400,
                        f"messages[{i}].content[{j}] is a {part.type!r} part; this server "
                        "reads only text parts",
                        param=f"messages[{i}].content[{j}]",
                        code="unsupported_content_type",
                    )
                if part.text is None:
                    raise OpenAIError(
                        400,
                        f"messages[{i}].content[{j}].text is missing",
                        param=f"messages[{i}].content[{j}].text",
                        code="invalid_value",
                    )
                pieces.append(part.text)
            text = "".join(pieces)
        rendered.append({"role": message.role, "content": text, **template_tool_fields(message, i)})
    return rendered
