"""What the operator's indexes keep of a child: what it reads, not the pod templates."""

import pytest
from exo_operator.handlers.indexes import slim_child

META = {
    "name": "gemma-abc",
    "namespace": "ml",
    "uid": "u",
    "labels": {"exo.dev/model": "gemma"},
    "ownerReferences": [{"uid": "owner"}],
    "managedFields": [{"manager": "kube-controller-manager", "fieldsV1": {"f:status": {}}}],
}
TEMPLATE = {"spec": {"containers": [{"name": "runtime", "image": "exo-runtime:dev"}]}}


@pytest.mark.parametrize(
    ("spec", "kept_spec"),
    [
        ({"nodeName": "kwok-gpu-3", **TEMPLATE["spec"]}, {"nodeName": "kwok-gpu-3"}),  # a pod
        (TEMPLATE["spec"], {}),  # a pod not yet scheduled
        ({"replicas": 1, "template": TEMPLATE}, {}),  # a Deployment
        ({"backoffLimit": 0, "template": TEMPLATE}, {}),  # a Job
    ],
)
def test_a_child_keeps_metadata_status_and_node_only(spec, kept_spec):
    status = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    kept = slim_child({"metadata": META, "spec": spec, "status": status})
    assert kept["spec"] == kept_spec
    assert kept["status"] == status
    assert kept["metadata"] == {k: v for k, v in META.items() if k != "managedFields"}


def test_a_child_without_spec_or_status_is_kept_as_it_is():
    assert slim_child({"metadata": {"name": "x"}}) == {"metadata": {"name": "x"}, "spec": {}}
