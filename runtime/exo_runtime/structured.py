"""Structured output: a request's `response_format` (or a JSON schema of a tool) turned into GBNF,
the grammar llama.cpp's grammar sampler constrains a sequence with.

Pure functions of the request's JSON: nothing here touches an engine. A schema is converted by
llama.cpp's own converter (`llama_cpp.llama_grammar`, the port of its json_schema_to_grammar.py);
keywords that converter would silently not enforce are refused, so that whatever is accepted is
also what the answer validates against.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf


class StructuredOutputError(ValueError):
    """The request asks for structure that cannot be turned into a grammar; `param` names the
    field (OpenAI's dotted path), the message says why."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


# Any JSON object (llama.cpp's grammars/json.gbnf): what `{"type": "json_object"}` asks for.
JSON_OBJECT_GRAMMAR = JSON_GBNF

# JSON Schema keywords the converter ignores: a grammar built without them would let through
# answers that fail validation, so a schema using them is refused instead.
UNENFORCED_KEYWORDS = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "minProperties",
        "maxProperties",
        "patternProperties",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "if",
        "then",
        "else",
        "not",
        "unevaluatedProperties",
        "unevaluatedItems",
    }
)
# Keywords whose value is one subschema, a list of them, or a map of names to them.
_SUBSCHEMA = ("items", "additionalProperties", "additionalItems")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
# llama.cpp parses GBNF by recursive descent, one C++ frame per parenthesis: about 20,000 nested
# groups overflow a thread's stack and kill the process. No real grammar nests a hundredth of that.
MAX_GBNF_NESTING = 200
# OpenAI's rule for `json_schema.name`.
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def grammar_for_json_schema(schema: dict) -> str:
    """GBNF (start rule `root`) whose every sentence is JSON valid against `schema`.

    Raise StructuredOutputError (param "schema") for a schema the converter cannot handle or
    would not enforce."""
    if not isinstance(schema, dict):
        raise StructuredOutputError("the schema must be a JSON object", "schema")
    try:
        _refuse_unenforced(schema)
        return json_schema_to_gbnf(json.dumps(schema))
    except StructuredOutputError:
        raise
    # The converter reports what it cannot handle with whatever it raises (an assertion, a
    # KeyError on a missing $ref target, a ValueError for a pattern without ^...$).
    except (ValueError, KeyError, TypeError, AssertionError, AttributeError, IndexError) as err:
        raise StructuredOutputError(
            f"the schema cannot be turned into a grammar: {type(err).__name__}: {err}", "schema"
        ) from err
    except RecursionError as err:
        raise StructuredOutputError("the schema is nested too deeply", "schema") from err


def gbnf_nesting(grammar: str) -> int:
    """The deepest nesting of parenthesised groups in GBNF text (literals, character classes
    and comments skipped)."""
    depth = deepest = 0
    quote: str | None = None  # the closing character while inside "..." or [...]
    chars = iter(grammar)
    for char in chars:
        if quote is not None:
            if char == "\\":
                next(chars, None)
            elif char == quote:
                quote = None
        elif char == "#":
            for skipped in chars:
                if skipped == "\n":
                    break
        elif char in '"[':
            quote = '"' if char == '"' else "]"
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth = max(depth - 1, 0)
    return deepest


def grammar_for_response_format(response_format: Mapping[str, Any] | None) -> str | None:
    """The grammar `response_format` asks for; None for plain text (or no response_format).

    Raise StructuredOutputError naming the field under `response_format` that is wrong."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT_GRAMMAR
    if kind != "json_schema":
        raise StructuredOutputError(
            f"response_format.type is {kind!r}; give 'text', 'json_object' or 'json_schema'",
            "response_format.type",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, Mapping):
        raise StructuredOutputError(
            "response_format.json_schema must be an object with a name and a schema",
            "response_format.json_schema",
        )
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise StructuredOutputError(
            "response_format.json_schema.name must be 1 to 64 letters, digits, _ or -",
            "response_format.json_schema.name",
        )
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise StructuredOutputError(
            "response_format.json_schema.strict must be true or false",
            "response_format.json_schema.strict",
        )
    if "schema" not in spec:
        return JSON_OBJECT_GRAMMAR  # OpenAI's schema is optional: then any JSON object
    try:
        return grammar_for_json_schema(spec["schema"])
    except StructuredOutputError as err:
        raise StructuredOutputError(
            f"response_format.json_schema: {err}",
            f"response_format.json_schema.{err.param}",
        ) from err


def _refuse_unenforced(schema: dict) -> None:
    for path, keyword in _keywords(schema, "schema"):
        if keyword in UNENFORCED_KEYWORDS:
            raise StructuredOutputError(
                f"{path} uses {keyword!r}, which this server cannot enforce while generating; "
                "leave it out and check the value after",
                path,
            )


def _keywords(schema: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, keyword) for every keyword of `schema` and of its subschemas (not of names)."""
    if not isinstance(schema, Mapping):
        return
    for keyword, value in schema.items():
        yield path, keyword
        where = f"{path}.{keyword}"
        if keyword in _SUBSCHEMA:
            yield from _keywords(value, where)
        elif keyword in _SUBSCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                yield from _keywords(sub, f"{where}[{i}]")
        elif keyword in _SUBSCHEMA_MAPS and isinstance(value, Mapping):
            for name, sub in value.items():
                yield from _keywords(sub, f"{where}.{name}")
