"""What the operator's indexes keep of a child: what it reads, not the pod templates."""

import json

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


def test_children_parsed_apart_share_their_keys_and_short_strings():
    # Two watch events, parsed apart as the watch parses them: equal strings, distinct objects.
    long_message = "Back-off pulling image " + "x" * 100
    event = json.dumps(
        {
            "metadata": {"labels": {"app.kubernetes.io/managed-by": "exo-operator"}},
            "status": {"conditions": [{"type": "Ready", "message": long_message}]},
        }
    )
    first, second = (slim_child(json.loads(event)) for _ in range(2))

    def label_key(child):
        return next(iter(child["metadata"]["labels"]))

    assert label_key(first) is label_key(second)
    assert (
        first["metadata"]["labels"][label_key(first)]
        is second["metadata"]["labels"][label_key(second)]
    )
    assert first["status"]["conditions"][0]["type"] is second["status"]["conditions"][0]["type"]
    # A long string is most likely unique (a message, a hash): sharing it would only cost.
    assert (
        first["status"]["conditions"][0]["message"]
        is not second["status"]["conditions"][0]["message"]
    )


def test_the_index_keeps_a_copy_not_the_events_own_objects():
    body = {"metadata": {"name": "x", "labels": {"a": "b"}}, "status": {"phase": "Pending"}}
    kept = slim_child(body)
    body["status"]["phase"] = "Running"
    body["metadata"]["labels"]["a"] = "c"
    assert kept["status"] == {"phase": "Pending"} and kept["metadata"]["labels"] == {"a": "b"}
