"""The CRD is the API's documentation: every field described, the subresources in place."""

from pathlib import Path

import pytest
import yaml
from exo_operator.model import ExoModelSpec
from pydantic import BaseModel

CRD = Path(__file__).resolve().parents[2] / "crds" / "exo.dev_exomodels.yaml"
# The ExoModels that admission must refuse; the kwok tier applies each to a real apiserver.
INVALID_CORPUS = Path(__file__).resolve().parents[1] / "crd_invalid"


def load():
    return yaml.safe_load(CRD.read_text())


def walk(schema, path):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")


def test_every_spec_and_status_field_has_a_description():
    root = load()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [
        path
        for top in ("spec", "status")
        for path, node in walk(root["properties"][top], top)
        if not node.get("description")
    ]
    assert missing == []


def test_names_subresources_and_printer_columns():
    crd = load()
    assert crd["spec"]["group"] == "exo.dev"
    assert crd["spec"]["names"]["shortNames"] == ["exom"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase", "Ready", "Engine", "GPUs", "Endpoint", "Context", "Age",
    ]  # fmt: skip
    # The context in use shows in `kubectl get exom -o wide` only.
    (context,) = [c for c in version["additionalPrinterColumns"] if c["name"] == "Context"]
    assert context == context | {"jsonPath": ".status.contextLength", "priority": 1}


def test_the_context_length_description_states_the_runtimes_default_cap():
    from exo_runtime.engine import DEFAULT_MAX_CONTEXT_LENGTH

    node = spec_schema()["properties"]["engineArgs"]["properties"]["contextLength"]
    text = " ".join(node["description"].split())
    assert (
        "when unset, the model's trained context (GGUF metadata or config.json), capped at "
        f"{DEFAULT_MAX_CONTEXT_LENGTH} tokens per sequence (the runtime's --max-context-length)"
    ) in text


def test_every_validation_message_names_its_field():
    root = load()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(root, ""):
        for rule in node.get("x-kubernetes-validations") or []:
            assert "spec." in rule["message"] or "metadata.name" in rule["message"], (path, rule)


def spec_schema():
    return load()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def nested_model(annotation):
    """The pydantic model a field holds, through `X | None`."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def paired_fields(schema, model_cls, path="spec"):
    """(path, schema node, pydantic field) for every schema property the model reads."""
    by_alias = {f.alias or name: f for name, f in model_cls.model_fields.items()}
    for name, node in (schema.get("properties") or {}).items():
        field = by_alias.get(name)
        if field is None:
            continue
        yield f"{path}.{name}", node, field
        sub = nested_model(field.annotation)
        if sub is not None:
            yield from paired_fields(node, sub, f"{path}.{name}")


PAIRS = list(paired_fields(spec_schema(), ExoModelSpec))


def test_the_operator_model_reads_every_spec_field():
    def paths(schema, path="spec"):
        for name, node in (schema.get("properties") or {}).items():
            yield f"{path}.{name}"
            if node.get("properties"):
                yield from paths(node, f"{path}.{name}")

    assert sorted(paths(spec_schema())) == sorted(path for path, _, _ in PAIRS)


@pytest.mark.parametrize(("path", "node", "field"), PAIRS, ids=[p for p, _, _ in PAIRS])
def test_schema_and_operator_model_default_alike(path, node, field):
    """The apiserver fills the schema's defaults; builders given a spec by hand, the model's."""
    if field.default_factory is not None:
        made = field.default_factory()
        if isinstance(made, BaseModel):
            made = made.model_dump(by_alias=True, exclude_none=True)
        python_default = made
    else:
        python_default = None if field.is_required() else field.default
    if "default" not in node:
        assert python_default in (None, {}, []), f"{path}: model defaults to {python_default!r}"
    elif isinstance(python_default, dict) and node["default"] == {}:
        # An object defaulted to {} has its own fields defaulted inside, checked field by field.
        assert nested_model(field.annotation) is not None, path
    else:
        assert node["default"] == python_default, path


def test_the_invalid_corpus_is_large_enough():
    assert len(list(INVALID_CORPUS.glob("*.yaml"))) >= 25
