"""structured.py without a model: which requests become which grammar, and which are refused
with a parameter named. That the grammar constrains a real model is the runtime tier's test
(tests/runtime/test_structured_output.py)."""

from __future__ import annotations

import pytest
from exo_runtime.openai_api import ChatCompletionBody, OpenAIError
from exo_runtime.structured import (
    JSON_OBJECT_GRAMMAR,
    MAX_GBNF_NESTING,
    StructuredOutputError,
    gbnf_nesting,
    grammar_for_json_schema,
    grammar_for_response_format,
)
from exo_runtime.unsupported import refuse_unsupported, refuse_unsupported_by_engine

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def json_schema(schema: object, **extra: object) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, **extra}}


def test_a_schema_becomes_gbnf_with_a_root_rule_naming_every_property() -> None:
    grammar = grammar_for_json_schema(PERSON)
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines())
    assert rules["root"].startswith('"{"'), rules["root"]
    assert '\\"name\\"' in rules["name-kv"] and '\\"age\\"' in rules["age-kv"]


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        (None, None),
        ({"type": "text"}, None),
        ({"type": "json_object"}, JSON_OBJECT_GRAMMAR),
        (json_schema(PERSON, strict=True), grammar_for_json_schema(PERSON)),
        (json_schema(PERSON, strict=False), grammar_for_json_schema(PERSON)),
        # OpenAI's schema is optional: without one, any JSON object.
        ({"type": "json_schema", "json_schema": {"name": "any"}}, JSON_OBJECT_GRAMMAR),
    ],
    ids=["absent", "text", "json_object", "strict schema", "loose schema", "no schema"],
)
def test_each_response_format_asks_for_its_grammar(
    response_format: dict | None, expected: str | None
) -> None:
    assert grammar_for_response_format(response_format) == expected


@pytest.mark.parametrize(
    ("response_format", "param", "says"),
    [
        ({"type": "xml"}, "response_format.type", "'xml'"),
        ({"a": [[[]]]}, "response_format.type", "None"),
        ({"type": "json_schema"}, "response_format.json_schema", "name and a schema"),
        ({"type": "json_schema", "json_schema": {"schema": PERSON}},
         "response_format.json_schema.name", "letters"),
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": PERSON}},
         "response_format.json_schema.name", "letters"),
        (json_schema(PERSON, strict="yes"), "response_format.json_schema.strict", "true or false"),
        (json_schema([1, 2]), "response_format.json_schema.schema", "JSON object"),
        (json_schema({"type": "integer", "minimum": 3}),
         "response_format.json_schema.schema", "'minimum'"),
        (json_schema({"type": "object", "properties": {"n": {"type": "number", "maximum": 9}}}),
         "response_format.json_schema.schema.properties.n", "'maximum'"),
        (json_schema({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
         "response_format.json_schema.schema", "'uniqueItems'"),
        (json_schema({"type": "string", "pattern": "[0-9]+"}),
         "response_format.json_schema.schema", "cannot be turned into a grammar"),
        (json_schema({"type": "duration"}),
         "response_format.json_schema.schema", "Unrecognized schema"),
        (json_schema({"$ref": "#/$defs/missing"}),
         "response_format.json_schema.schema", "cannot be turned into a grammar"),
    ],
    ids=[
        "unknown type", "no type", "no json_schema", "no name", "bad name", "strict not a bool",
        "schema not an object", "minimum", "nested maximum", "uniqueItems", "unanchored pattern",
        "unknown schema type", "dangling $ref",
    ],
)  # fmt: skip
def test_a_format_that_cannot_be_enforced_is_refused_naming_the_field(
    response_format: dict, param: str, says: str
) -> None:
    with pytest.raises(StructuredOutputError) as refused:
        grammar_for_response_format(response_format)
    assert refused.value.param == param
    assert says in str(refused.value)


def test_a_property_named_like_a_keyword_is_a_name_not_a_keyword() -> None:
    schema = {"type": "object", "properties": {"minimum": {"type": "integer"}}}
    assert "minimum" in grammar_for_json_schema(schema)


def test_a_schema_nested_past_the_recursion_limit_is_refused_not_crashed() -> None:
    schema: dict = {"type": "integer"}
    for _ in range(5000):
        schema = {"type": "array", "items": schema}
    with pytest.raises(StructuredOutputError, match="nested too deeply"):
        grammar_for_json_schema(schema)


def chat(**fields: object) -> ChatCompletionBody:
    return ChatCompletionBody.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


@pytest.mark.parametrize(
    "fields",
    [{"response_format": {"type": "json_object"}}, {"grammar": 'root ::= "a"'}],
    ids=["response_format", "grammar"],
)
def test_every_engine_may_serve_structured_output_but_mlx_refuses_it(fields: dict) -> None:
    body = chat(**fields)
    refuse_unsupported(body)
    refuse_unsupported_by_engine(body, "llamacpp")
    with pytest.raises(OpenAIError) as refused:
        refuse_unsupported_by_engine(body, "mlx")
    assert refused.value.status == 400
    assert refused.value.param == next(iter(fields))


@pytest.mark.parametrize(
    ("grammar", "nesting"),
    [
        ('root ::= "yes" | "no"', 0),
        ('root ::= ("a" ("b" | "c"))*', 2),
        ('root ::= "((((" [(] "\\"(("', 0),  # in literals and classes, escaped quotes too
        ('root ::= [^\\]((] ("x")', 1),
        ('# ((((( a comment\nroot ::= ("a")', 1),
        ('root ::= ))) ((("a")))', 3),  # stray closers do not hide the openers after them
    ],
)
def test_gbnf_nesting_counts_only_grouping_parentheses(grammar: str, nesting: int) -> None:
    assert gbnf_nesting(grammar) == nesting


def test_a_schema_grammar_nests_far_below_the_limit() -> None:
    nested: dict = {"type": "string"}
    for _ in range(50):
        nested = obj_with(nested)
    assert gbnf_nesting(grammar_for_json_schema(nested)) < MAX_GBNF_NESTING


def obj_with(value: dict) -> dict:
    return {"type": "object", "properties": {"v": value}, "required": ["v"]}
