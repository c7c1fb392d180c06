"""The label selector the operator hands kopf for the apiserver, resource by resource."""

import kopf
import pytest
from exo_operator.handlers.indexes import (
    CHILD_FILTER,
    CHILD_SELECTOR,
    select_children_server_side,
)

CHILDREN = [
    ("", "v1", "pods"),
    ("batch", "v1", "jobs"),
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("", "v1", "persistentvolumeclaims"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
]


def selectors_for(group: str, version: str, plural: str) -> list[str]:
    settings = kopf.OperatorSettings()
    select_children_server_side(settings)
    return settings.watching.label_selectors.collect(kopf.Resource(group, version, plural))


@pytest.mark.parametrize(("group", "version", "plural"), CHILDREN)
def test_every_child_resource_is_selected_by_managed_by_and_model(group, version, plural):
    assert selectors_for(group, version, plural) == [CHILD_SELECTOR]


@pytest.mark.parametrize(
    ("group", "version", "plural"),
    [("exo.dev", "v1alpha1", "exomodels"), ("", "v1", "secrets"), ("", "v1", "events")],
)
def test_models_and_resources_that_are_not_children_are_not_filtered(group, version, plural):
    assert selectors_for(group, version, plural) == []


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """The apiserver's reading of the two term forms the selector uses: `key` and `key=value`."""
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if key not in labels or (value and labels[key] != value):
            return False
    return True


def filter_matches(labels: dict[str, str]) -> bool:
    return all(
        key in labels and (wanted is kopf.PRESENT or labels[key] == wanted)
        for key, wanted in CHILD_FILTER.items()
    )


@pytest.mark.parametrize(
    "labels",
    [
        {"exo.dev/model": "m", "app.kubernetes.io/managed-by": "exo-operator"},
        {"exo.dev/model": "", "app.kubernetes.io/managed-by": "exo-operator"},
        {"exo.dev/model": "m", "app.kubernetes.io/managed-by": "helm"},
        {"exo.dev/model": "m"},
        {"app.kubernetes.io/managed-by": "exo-operator"},
        {"app": "unrelated"},
    ],
)
def test_the_server_side_selector_matches_what_the_client_side_filter_matches(labels):
    assert selector_matches(CHILD_SELECTOR, labels) == filter_matches(labels)
