"""The operator never adopts, changes or deletes an object named like a child it does not own."""

import json
import time

import pytest
from fixtures.waiting import wait_for
from operator_harness import (
    apply,
    condition,
    exomodel,
    get_json,
    kubectl,
    model_events,
    model_status,
)

pytestmark = pytest.mark.kwok

USER_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "clash", "labels": {"app": "users-own"}},
    "spec": {"selector": {"app": "users-own"}, "ports": [{"port": 80, "targetPort": 8080}]},
}
USER_CLAIM = {
    "apiVersion": "v1",
    "kind": "PersistentVolumeClaim",
    "metadata": {"name": "clash-cache"},
    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
}


def user_objects(kubeconfig, namespace):
    """What a user would notice of their own objects: spec, labels, owners, resourceVersion."""
    out = {}
    for kind, name in (("service", "clash"), ("pvc", "clash-cache")):
        obj = get_json(kubeconfig, kind, name, "-n", namespace)
        assert obj is not None, f"the user's {kind} {name} is gone"
        meta = obj["metadata"]
        out[kind] = {
            "resourceVersion": meta["resourceVersion"],
            "uid": meta["uid"],
            "labels": meta.get("labels"),
            "ownerReferences": meta.get("ownerReferences"),
            "annotations": meta.get("annotations"),
            "spec": {k: v for k, v in obj["spec"].items() if k != "volumeName"},
        }
    return out


def test_a_model_named_like_a_users_service_and_claim_leaves_them_alone(kubeconfig, namespace):
    for manifest in (USER_SERVICE, USER_CLAIM):
        apply(kubeconfig, namespace, json.dumps(manifest))
    time.sleep(1)  # kwok binds the claim; settle before taking the user's view
    before = user_objects(kubeconfig, namespace)

    apply(kubeconfig, namespace, exomodel("clash"))
    status = wait_for(
        lambda: (
            (s := model_status(kubeconfig, namespace, "clash"))
            and condition(s, "Ready").get("reason") == "NameConflict"
            and s
        ),
        "the NameConflict reason",
    )
    assert status["phase"] == "Failed"
    assert "Service clash" in status["message"]
    assert "PersistentVolumeClaim clash-cache" in status["message"]
    events = model_events(kubeconfig, namespace, "clash", "NameConflict")
    assert "NameConflict" in {e["reason"] for e in events if e["type"] == "Warning"}
    # Nothing that would run against the user's claim was made.
    for kind in ("jobs", "deployments"):
        items = get_json(kubeconfig, kind, "-n", namespace, "-l", "exo.dev/model=clash")["items"]
        assert items == [], kind
    time.sleep(6)  # a resync (EXO_RESYNC_SECONDS=5) goes by without touching them either
    assert user_objects(kubeconfig, namespace) == before

    kubectl(kubeconfig, "delete", "exom", "clash", "-n", namespace, "--timeout=30s")
    time.sleep(3)  # garbage collection has what it needs to act by now
    assert user_objects(kubeconfig, namespace) == before
