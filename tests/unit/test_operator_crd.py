"""The CRD is the API's documentation: every field described, the subresources in place."""

from pathlib import Path

import yaml

CRD = Path(__file__).resolve().parents[2] / "crds" / "exo.dev_exomodels.yaml"


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
        "Phase", "Ready", "Engine", "GPUs", "Endpoint", "Age",
    ]  # fmt: skip


def test_every_validation_message_names_its_field():
    root = load()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(root, ""):
        for rule in node.get("x-kubernetes-validations") or []:
            assert "spec." in rule["message"] or "metadata.name" in rule["message"], (path, rule)
