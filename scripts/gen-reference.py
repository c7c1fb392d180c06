#!/usr/bin/env python3
"""Writes the ExoModel reference into README.md from the CRD schema (crds/), so they never drift.

python3 scripts/gen-reference.py           rewrite the block between the README's markers
python3 scripts/gen-reference.py --check   exit 1 when the README's block is out of date
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CRD_PATH = REPO_ROOT / "crds" / "exo.dev_exomodels.yaml"
README_PATH = REPO_ROOT / "README.md"
START_MARKER = "<!-- exomodel-reference:start -->"
END_MARKER = "<!-- exomodel-reference:end -->"


class ReferenceError(Exception):
    """The CRD or the README is not in the shape this generator needs; the message says why."""


def load_schema(crd_path: Path) -> tuple[str, dict]:
    """The served version's name and its openAPIV3Schema, from the CRD file."""
    crd = yaml.safe_load(crd_path.read_text())
    versions = [v for v in crd["spec"]["versions"] if v.get("served")]
    if len(versions) != 1:
        raise ReferenceError(f"{crd_path}: expected one served version, found {len(versions)}")
    return versions[0]["name"], versions[0]["schema"]["openAPIV3Schema"]


def type_of(schema: dict) -> str:
    """A short type name as a user writes the field: string, integer, object, []number, ..."""
    if schema.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = schema.get("type", "object")
    if kind == "array":
        return "[]" + type_of(schema.get("items", {}))
    if kind == "object" and "additionalProperties" in schema:
        return "map[string]" + type_of(schema["additionalProperties"])
    return kind


def constraints_of(schema: dict) -> list[str]:
    """The rules a value must follow, in words: enums, bounds, and each CEL rule's message."""
    notes = []
    if "enum" in schema:
        notes.append("one of " + ", ".join(f"`{v}`" if v != "" else '`""`' for v in schema["enum"]))
    for key, word in (("minimum", "≥"), ("maximum", "≤")):
        if key in schema:
            notes.append(f"{word} {schema[key]}")
    for key, word in (("maxLength", "characters"), ("maxItems", "items")):
        if key in schema:
            notes.append(f"at most {schema[key]} {word}")
    if "required" in schema:
        notes.append("requires " + ", ".join(f"`{r}`" for r in schema["required"]))
    notes.extend(rule["message"] for rule in schema.get("x-kubernetes-validations", []))
    return notes


def walk(schema: dict, path: str) -> Iterator[tuple[str, dict]]:
    """Every field under schema, depth first in the schema's order, as (dotted path, schema)."""
    for name, child in schema.get("properties", {}).items():
        child_path = f"{path}.{name}"
        yield child_path, child
        if child.get("type") == "array" and "properties" in child.get("items", {}):
            yield from walk(child["items"], child_path + "[]")
        else:
            yield from walk(child, child_path)


def yaml_literal(value: object) -> str:
    """value as a user would write it in the ExoModel's YAML: main, 1, true, {}, [1, 1]."""
    return (
        yaml.safe_dump(value, default_flow_style=True, width=1000).removesuffix("\n...\n").strip()
    )


def cell(text: str) -> str:
    """Text made safe for one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table(schema: dict, root: str) -> str:
    """One Markdown table of every field under root (spec or status)."""
    rows = ["| Field | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for path, field in walk(schema, root):
        default = f"`{yaml_literal(field['default'])}`" if "default" in field else ""
        description = field.get("description", "")
        constraints = constraints_of(field)
        if constraints:
            description += " *" + "; ".join(constraints) + ".*"
        rows.append(f"| `{path}` | {type_of(field)} | {cell(default)} | {cell(description)} |")
    return "\n".join(rows)


def render_reference(crd_path: Path = CRD_PATH) -> str:
    """The whole reference block (without the markers), generated from the CRD."""
    version, schema = load_schema(crd_path)
    properties = schema["properties"]
    object_rules = [rule["message"] for rule in schema.get("x-kubernetes-validations", [])]
    spec_rules = [
        rule["message"] for rule in properties["spec"].get("x-kubernetes-validations", [])
    ]
    shown_path = crd_path.relative_to(REPO_ROOT) if crd_path.is_relative_to(REPO_ROOT) else crd_path
    lines = [
        f"<!-- Generated from {shown_path} by scripts/gen-reference.py;"
        " edit the CRD, then run `python3 scripts/gen-reference.py`. -->",
        "",
        f"`apiVersion: exo.dev/{version}`, `kind: ExoModel` (short name `exom`), namespaced.",
        "",
        cell(schema.get("description", "")),
        "",
        "### spec",
        "",
        table(properties["spec"], "spec"),
        "",
        "Rules across fields, checked when the ExoModel is applied:",
        "",
        *[f"- {cell(message)}" for message in object_rules + spec_rules],
        "",
        "### status",
        "",
        "Written by the operator only.",
        "",
        table(properties["status"], "status"),
    ]
    return "\n".join(lines)


def replace_block(readme: str, block: str) -> str:
    """readme with the text between the markers replaced by block."""
    if readme.count(START_MARKER) != 1 or readme.count(END_MARKER) != 1:
        raise ReferenceError(
            f"README.md must hold exactly one {START_MARKER} and one {END_MARKER} line "
            "(the generated ExoModel reference goes between them)"
        )
    head, rest = readme.split(START_MARKER)
    _, tail = rest.split(END_MARKER)
    return f"{head}{START_MARKER}\n{block}\n{END_MARKER}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md is out of date")
    parser.add_argument("--readme", type=Path, default=README_PATH)
    parser.add_argument("--crd", type=Path, default=CRD_PATH)
    args = parser.parse_args(argv)
    try:
        readme = args.readme.read_text()
        updated = replace_block(readme, render_reference(args.crd))
    except (OSError, ReferenceError, KeyError, yaml.YAMLError) as error:
        print(f"gen-reference: {error}", file=sys.stderr)
        return 2
    if args.check:
        if updated != readme:
            print(
                f"gen-reference: the ExoModel reference in {args.readme} is out of date with "
                f"{args.crd}: run python3 scripts/gen-reference.py",
                file=sys.stderr,
            )
            return 1
        return 0
    if updated != readme:
        args.readme.write_text(updated)
        print(f"gen-reference: updated the ExoModel reference in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
