"""The operator's /metrics, scraped from the running operator process while it reconciles."""

import json

import pytest
from fixtures.waiting import wait_for
from operator_harness import kubectl
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.kwok

MODEL = """
apiVersion: exo.dev/v1alpha1
kind: ExoModel
metadata: {name: counted}
spec:
  source: {url: https://models.example/gemma-3-270m-Q4_K_M.gguf}
  resources: {gpus: 1}
"""


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def ready_models(kubeconfig: str) -> int:
    """ExoModels whose status says Ready, in every namespace (earlier tests' included)."""
    listed = json.loads(kubectl(kubeconfig, "get", "exom", "-A", "-o", "json").stdout)
    return sum(
        1
        for m in listed["items"]
        if (m.get("status") or {}).get("phase") == "Ready"
        and not m["metadata"].get("deletionTimestamp")
    )


def agreed_ready_count(kubeconfig: str, operator) -> dict | None:
    """The scrape, when its Ready gauge matches the cluster on both sides of it (else None).

    Earlier tests' namespaces may still be going away, so the count is compared, not a delta.
    """
    in_cluster = ready_models(kubeconfig)
    scraped = samples(operator.metrics())
    if (
        value(scraped, "exo_operator_models", phase="Ready")
        == in_cluster
        == ready_models(kubeconfig)
    ):
        return scraped
    return None


def test_a_reconciled_model_shows_in_the_operators_metrics(kubeconfig, namespace, operator):
    before = samples(operator.metrics())
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=MODEL)
    kubectl(
        kubeconfig, "wait", "-n", namespace, "exom/counted",
        "--for=jsonpath={.status.phase}=Ready", "--timeout=60s",
    )  # fmt: skip

    after = wait_for(
        lambda: agreed_ready_count(kubeconfig, operator),
        "exo_operator_models{phase=Ready} to match the Ready ExoModels",
        30,
    )
    assert value(after, "exo_operator_models", phase="Ready") >= 1
    writes = "exo_operator_status_writes_total"
    assert value(after, writes) > value(before, writes)
    applies = "exo_operator_child_applies_total"
    for kind in ("Deployment", "Service", "Job", "PersistentVolumeClaim"):
        assert value(after, applies, kind=kind) > value(before, applies, kind=kind), kind

    kubectl(kubeconfig, "delete", "-n", namespace, "exom/counted", "--wait=true")
    wait_for(
        lambda: agreed_ready_count(kubeconfig, operator),
        "the deleted model to leave exo_operator_models",
        30,
    )
