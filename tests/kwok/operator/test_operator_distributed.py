"""One model across several pods on a real control plane with fake GPU nodes (kwok).

kwok makes the head and worker pods Running and Ready without running them: what the runtime
does across workers (RPC, the split, reloading) is the runtime tier's; here the operator's part
is real, from admission to the StatefulSet, the members and the group's recovery.
"""

import pytest
from fixtures.waiting import wait_for
from operator_harness import (
    REPO,
    apply,
    condition,
    exomodel,
    get_json,
    kubectl,
    model_events,
    model_status,
    wait_phase,
)

pytestmark = pytest.mark.kwok

CORPUS = REPO / "tests" / "crd_invalid"
REFUSED = sorted(CORPUS.glob("distributed-*.yaml"))
EXAMPLE = REPO / "examples" / "gpu-distributed-llama-3.3-70b.yaml"


def split_model(name: str, workers: int = 2) -> str:
    return exomodel(name, resources={"gpus": 1, "cpu": "2"}, distributed={"workers": workers})


def test_bad_splits_are_refused_at_admission_naming_the_field_and_the_example_is_admitted(
    kubeconfig, namespace
):
    assert len(REFUSED) >= 8
    for case in REFUSED:
        proc = kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(case), check=False)
        expected = case.read_text().splitlines()[0].removeprefix("# expect: ")
        assert proc.returncode != 0, f"{case.name} was admitted"
        assert expected in proc.stderr, f"{case.name}: {proc.stderr}"
    kubectl(kubeconfig, "apply", "--dry-run=server", "-n", namespace, "-f", str(EXAMPLE))


def test_a_split_model_runs_its_workers_and_is_ready_three_of_three(kubeconfig, namespace):
    apply(kubeconfig, namespace, split_model("split"))
    status = wait_for(
        lambda: (s := model_status(kubeconfig, namespace, "split")).get("readyMembers") == 3 and s,
        "the head and both workers ready",
    )
    assert status["phase"] == "Ready", status
    uid = get_json(kubeconfig, "exom", "split", "-n", namespace)["metadata"]["uid"]

    sts = get_json(kubeconfig, "statefulset", "split-workers", "-n", namespace)
    svc = get_json(kubeconfig, "service", "split-workers", "-n", namespace)
    for child in (sts, svc):
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == uid and ref["controller"] is True
    assert sts["spec"]["replicas"] == 2 and sts["spec"]["serviceName"] == "split-workers"
    worker = sts["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"][:5] == ["rpc-worker", "--host", "0.0.0.0", "--port", "50052"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]

    head = get_json(kubeconfig, "deployment", "split", "-n", namespace)
    args = head["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--rpc-workers") + 1] == ",".join(
        f"split-workers-{i}.split-workers.{namespace}.svc:50052" for i in range(2)
    )

    members = status["members"]
    assert [(m["role"], m["ready"]) for m in members] == [("head", True), ("worker", True),
                                                          ("worker", True)]  # fmt: skip
    assert [m["name"] for m in members[1:]] == ["split-workers-0", "split-workers-1"]
    # One GPU per kwok node: head and workers land on three different nodes.
    assert len({m["node"] for m in members}) == 3
    table = kubectl(kubeconfig, "get", "exom", "split", "-n", namespace).stdout
    assert "Ready" in table and "3/3" in table

    kubectl(kubeconfig, "scale", "exom", "split", "-n", namespace, "--replicas=0")
    wait_for(
        lambda: (
            get_json(kubeconfig, "statefulset", "split-workers", "-n", namespace)["spec"][
                "replicas"
            ]
            == 0
        ),
        "the whole group scaled to zero",
    )


def test_a_lost_worker_degrades_the_model_naming_it_and_the_group_recovers(kubeconfig, namespace):
    apply(kubeconfig, namespace, split_model("group"))
    wait_phase(kubeconfig, namespace, "group", "Ready")
    wait_for(
        lambda: model_status(kubeconfig, namespace, "group").get("readyMembers") == 3,
        "every member ready",
    )
    nodes = [n["metadata"]["name"] for n in get_json(kubeconfig, "nodes")["items"]]
    # Cordoned nodes hold the replacement worker Pending, so the lost state lasts until the
    # test has seen it (kwok would otherwise replace the pod within a second).
    try:
        for node in nodes:
            kubectl(kubeconfig, "cordon", node)
        kubectl(kubeconfig, "delete", "pod", "group-workers-1", "-n", namespace, "--wait=false")
        status = wait_phase(kubeconfig, namespace, "group", "Degraded")
        assert condition(status, "Ready")["reason"] == "WorkerNotReady"
        assert "group-workers-1" in status["message"]
        assert status["readyText"] == "2/3"
    finally:
        for node in nodes:
            kubectl(kubeconfig, "uncordon", node, check=False)
    status = wait_phase(kubeconfig, namespace, "group", "Ready")
    assert status["readyText"] == "3/3"
    events = model_events(kubeconfig, namespace, "group", "WorkerNotReady")
    lost = [e for e in events if e["reason"] == "WorkerNotReady"]
    assert lost and "group-workers-1" in lost[0]["message"]


def test_replicas_scale_a_split_model_by_whole_groups(kubeconfig, namespace):
    # CPU pods, so that six members fit (the GPU nodes have one GPU each); two heads share the
    # cache, hence ReadWriteMany.
    apply(
        kubeconfig,
        namespace,
        exomodel(
            "duo",
            replicas=2,
            storage={"accessMode": "ReadWriteMany"},
            resources={"cpu": "250m"},
            distributed={"workers": 2},
        ),
    )
    status = wait_for(
        lambda: (s := model_status(kubeconfig, namespace, "duo")).get("readyMembers") == 6 and s,
        "two heads and four workers ready",
    )
    assert status["phase"] == "Ready", status
    table = kubectl(kubeconfig, "get", "exom", "duo", "-n", namespace).stdout
    assert "6/6" in table
    assert [(m["role"], m["group"]) for m in status["members"]] == [
        ("head", 0), ("worker", 0), ("worker", 0), ("head", 1), ("worker", 1), ("worker", 1)
    ]  # fmt: skip

    def worker_list(deployment):
        args = get_json(kubeconfig, "deployment", deployment, "-n", namespace)["spec"]["template"][
            "spec"]["containers"][0]["args"]  # fmt: skip
        return args[args.index("--rpc-workers") + 1].split(",")

    at = f".duo-workers.{namespace}.svc:50052"
    assert worker_list("duo") == [f"duo-workers-{i}{at}" for i in range(2)]
    assert worker_list("duo-g1") == [f"duo-g1-workers-{i}{at}" for i in range(2)]
    # The model's Service balances over both heads (once the EndpointSlice controller, which
    # follows pod readiness on its own, has caught up).
    heads = {m["name"] for m in status["members"] if m["role"] == "head"}

    def served():
        slices = get_json(
            kubeconfig, "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=duo"
        )["items"]
        return {e["targetRef"]["name"] for s in slices for e in s.get("endpoints") or []}

    wait_for(
        lambda: served() == heads,
        f"the Service's endpoints to be the heads {heads}",
        30,
        explain=lambda: f"endpoints: {served()}",
    )

    # A worker of group 1 lost: only group 1 stops serving (nodes cordoned hold its
    # replacement Pending until the test has seen that).
    nodes = [n["metadata"]["name"] for n in get_json(kubeconfig, "nodes")["items"]]
    try:
        for node in nodes:
            kubectl(kubeconfig, "cordon", node)
        kubectl(kubeconfig, "delete", "pod", "duo-g1-workers-1", "-n", namespace, "--wait=false")
        status = wait_phase(kubeconfig, namespace, "duo", "Degraded")
        assert condition(status, "Ready")["reason"] == "WorkerNotReady"
        assert status["message"].startswith("group 1: worker pod duo-g1-workers-1 not ready")
        assert condition(status, "Available")["status"] == "True"
        assert [m["name"] for m in status["members"] if not m["ready"]] == ["duo-g1-workers-1"]
    finally:
        for node in nodes:
            kubectl(kubeconfig, "uncordon", node, check=False)
    status = wait_phase(kubeconfig, namespace, "duo", "Ready")
    assert status["readyText"] == "6/6"

    # Scaled to one: group 1's head and workers go, and nothing of group 0 changes.
    def identity(kind, name):
        meta = get_json(kubeconfig, kind, name, "-n", namespace)["metadata"]
        return meta["uid"], meta.get("generation")

    kept = [("deployment", "duo"), ("statefulset", "duo-workers"), ("service", "duo"),
            ("service", "duo-workers"), ("pvc", "duo-cache")]  # fmt: skip
    before = {child: identity(*child) for child in kept}
    kubectl(kubeconfig, "scale", "exom", "duo", "-n", namespace, "--replicas=1")
    wait_for(
        lambda: (
            get_json(kubeconfig, "deployment", "duo-g1", "-n", namespace) is None
            and get_json(kubeconfig, "statefulset", "duo-g1-workers", "-n", namespace) is None
        ),
        "group 1's Deployment and StatefulSet deleted",
    )
    status = wait_for(
        lambda: (s := model_status(kubeconfig, namespace, "duo")).get("readyText") == "3/3" and s,
        "one group of three members",
    )
    assert status["phase"] == "Ready"
    assert {m["group"] for m in status["members"]} == {0}
    assert {child: identity(*child) for child in kept} == before
