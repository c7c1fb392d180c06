"""The operator on a real control plane with fake GPU nodes (kwok).

kwok's stages make pods Running and Ready and Job pods Succeeded, so fetches "complete" without
downloading; the real download and runtime run in the e2e tier on kind.
"""

import json
import time
from pathlib import Path

import pytest
from fixtures.paths import REPO_ROOT
from fixtures.waiting import wait_for
from operator_harness import (
    URL,
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

CORPUS = REPO_ROOT / "tests" / "crd_invalid"


def runtime_container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_create_makes_owned_children_with_the_right_specs_and_goes_ready(kubeconfig, namespace):
    apply(
        kubeconfig, namespace, exomodel("gemma", resources={"gpus": 1, "cpu": "2", "memory": "4Gi"})
    )
    status = wait_phase(kubeconfig, namespace, "gemma", "Ready")

    model = get_json(kubeconfig, "exom", "gemma", "-n", namespace)
    uid = model["metadata"]["uid"]
    pvc = get_json(kubeconfig, "pvc", "gemma-cache", "-n", namespace)
    dep = get_json(kubeconfig, "deployment", "gemma", "-n", namespace)
    svc = get_json(kubeconfig, "service", "gemma", "-n", namespace)
    jobs = get_json(kubeconfig, "jobs", "-n", namespace, "-l", "exo.dev/model=gemma")["items"]
    assert len(jobs) == 1
    for child in (pvc, dep, svc, jobs[0]):
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == uid and ref["controller"] is True

    fetch = jobs[0]["spec"]["template"]["spec"]["containers"][0]
    assert fetch["args"][:2] == ["fetch", URL]
    assert fetch["args"][fetch["args"].index("--dest") + 1] == f"/models/{status['cacheKey']}"

    pod = dep["spec"]["template"]["spec"]
    c = runtime_container(dep)
    assert c["image"] == "exo-runtime:dev"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "1", "cpu": "2", "memory": "4Gi"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
    assert c["args"][c["args"].index("--threads") + 1] == "2"
    assert svc["spec"]["ports"][0]["port"] == 8000

    assert status["endpoint"] == f"http://gemma.{namespace}.svc:8000/v1"
    assert status["readyReplicas"] == 1 and status["replicas"] == 1
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "ModelCached")["status"] == "True"
    assert status["observedGeneration"] == model["metadata"]["generation"]
    model_events(kubeconfig, namespace, "gemma", "Ready")
    table = kubectl(kubeconfig, "get", "exom", "gemma", "-n", namespace).stdout
    assert "Ready" in table and "1/1" in table and "llamacpp" in table


def test_two_gpu_model_on_one_gpu_nodes_is_unschedulable_and_says_why(kubeconfig, namespace):
    apply(kubeconfig, namespace, exomodel("big", resources={"gpus": 2}))
    status = wait_phase(kubeconfig, namespace, "big", "Pending")
    status = wait_for(
        lambda: (
            (s := model_status(kubeconfig, namespace, "big"))
            and condition(s, "Ready").get("reason") == "Unschedulable"
            and s
        ),
        "the Unschedulable reason",
    )
    assert "nvidia.com/gpu" in status["message"]
    assert "nvidia.com/gpu" in condition(status, "Ready")["message"]


def test_kubectl_scale_moves_the_deployment_and_the_status_counts(kubeconfig, namespace):
    # More than one replica needs a cache that several nodes can mount.
    apply(kubeconfig, namespace, exomodel("small", storage={"accessMode": "ReadWriteMany"}))
    wait_phase(kubeconfig, namespace, "small", "Ready")
    kubectl(kubeconfig, "scale", "exom", "small", "-n", namespace, "--replicas=3")
    wait_for(
        lambda: (
            get_json(kubeconfig, "deployment", "small", "-n", namespace)["spec"]["replicas"] == 3
        ),
        "the Deployment at 3 replicas",
    )
    status = wait_for(
        lambda: (s := model_status(kubeconfig, namespace, "small")).get("readyReplicas") == 3 and s,
        "3/3 ready",
    )
    assert status["phase"] == "Ready" and status["replicas"] == 3 and status["readyText"] == "3/3"
    scale = json.loads(
        kubectl(
            kubeconfig,
            "get",
            "--raw",
            f"/apis/exo.dev/v1alpha1/namespaces/{namespace}/exomodels/small/scale",
        ).stdout
    )
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "exo.dev/component=runtime,exo.dev/model=small"
    pdb = wait_for(
        lambda: get_json(kubeconfig, "pdb", "small", "-n", namespace),
        "the disruption budget",
    )
    assert pdb["spec"]["maxUnavailable"] == 1
    kubectl(kubeconfig, "scale", "exom", "small", "-n", namespace, "--replicas=1")
    wait_for(
        lambda: get_json(kubeconfig, "pdb", "small", "-n", namespace) is None,
        "the budget gone at one replica",
    )


def test_spec_change_rolls_the_deployment(kubeconfig, namespace):
    apply(kubeconfig, namespace, exomodel("roll"))
    wait_phase(kubeconfig, namespace, "roll", "Ready")
    before = get_json(kubeconfig, "deployment", "roll", "-n", namespace)
    kubectl(
        kubeconfig, "patch", "exom", "roll", "-n", namespace, "--type=merge",
        "-p", '{"spec":{"engineArgs":{"contextLength":2048}}}',
    )  # fmt: skip
    after = wait_for(
        lambda: (
            (d := get_json(kubeconfig, "deployment", "roll", "-n", namespace))["metadata"][
                "generation"
            ]
            > before["metadata"]["generation"]
            and d
        ),
        "a new pod template",
    )
    args = runtime_container(after)["args"]
    assert args[args.index("--context-length") + 1] == "2048"
    new_hash = after["spec"]["template"]["metadata"]["labels"]["exo.dev/template-hash"]
    assert new_hash != before["spec"]["template"]["metadata"]["labels"]["exo.dev/template-hash"]

    def rolled():
        s = model_status(kubeconfig, namespace, "roll")
        pods = get_json(
            kubeconfig, "pods", "-n", namespace, "-l", f"exo.dev/template-hash={new_hash}"
        )
        return (
            s.get("phase") == "Ready" and s.get("observedGeneration") == 2 and pods["items"] and s
        )

    wait_for(rolled, "the rollout to finish and the model to be Ready again")


def test_delete_removes_children_and_keeps_a_retained_cache(kubeconfig, namespace):
    apply(kubeconfig, namespace, exomodel("gone"))
    apply(kubeconfig, namespace, exomodel("kept", storage={"retainOnDelete": True}))
    wait_phase(kubeconfig, namespace, "gone", "Ready")
    wait_phase(kubeconfig, namespace, "kept", "Ready")
    kubectl(kubeconfig, "delete", "exom", "gone", "kept", "-n", namespace, "--timeout=30s")

    def children_gone():
        left = get_json(
            kubeconfig,
            "deployments,services,jobs",
            "-n",
            namespace,
            "-l",
            "exo.dev/model in (gone,kept)",
        )["items"]
        return not left

    wait_for(children_gone, "garbage collection of the children", timeout=60)
    wait_for(
        lambda: get_json(kubeconfig, "pvc", "gone-cache", "-n", namespace) is None,
        "the unretained cache to go",
    )
    assert get_json(kubeconfig, "pvc", "kept-cache", "-n", namespace) is not None
    time.sleep(2)
    assert get_json(kubeconfig, "pvc", "kept-cache", "-n", namespace) is not None


def test_fetch_failure_is_reported_with_the_runtimes_reason(kubeconfig, namespace):
    # No node has this label, so the fetch pod stays unscheduled and kwok leaves it alone.
    apply(kubeconfig, namespace, exomodel("broken", nodeSelector={"exo.dev/test": "nowhere"}))
    pod = wait_for(
        lambda: (
            get_json(kubeconfig, "pods", "-n", namespace, "-l", "exo.dev/component=fetch") or {}
        ).get("items"),
        "the fetch pod",
    )[0]
    # A checksum mismatch needs a real download and a real kubelet; on kwok we write the pod
    # status that `exo-runtime fetch` would leave behind (its termination message), the one
    # fault in this tier that cannot be caused for real.
    final = json.dumps(
        {"event": "failed", "reason": "ChecksumMismatch", "error": "expected aaaa, got bbbb"}
    )
    patch = {
        "status": {
            "phase": "Failed",
            "containerStatuses": [{
                "name": "fetch", "image": "exo-runtime:dev", "imageID": "", "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": final}},
            }],
        }
    }  # fmt: skip
    kubectl(
        kubeconfig, "patch", "pod", pod["metadata"]["name"], "-n", namespace,
        "--subresource=status", "--type=merge", "-p", json.dumps(patch),
    )  # fmt: skip
    status = wait_phase(kubeconfig, namespace, "broken", "Failed")
    cached = condition(status, "ModelCached")
    assert cached["status"] == "False" and cached["reason"] == "FetchFailed"
    assert "ChecksumMismatch" in status["message"] and "got bbbb" in status["message"]
    assert get_json(kubeconfig, "deployment", "broken", "-n", namespace) is None


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    kubeconfig, namespace, operator
):
    names = [f"m{i}" for i in range(6)]
    apply(kubeconfig, namespace, "---\n".join(exomodel(n) for n in names))
    time.sleep(0.5)
    operator.kill()
    operator.start()
    for name in names:
        wait_phase(kubeconfig, namespace, name, "Ready", timeout=90)
    for kind in ("deployments", "services", "jobs", "pvc"):
        items = get_json(kubeconfig, kind, "-n", namespace, "-l", "exo.dev/model")["items"]
        per_model = sorted(i["metadata"]["labels"]["exo.dev/model"] for i in items)
        assert per_model == names, f"{kind}: {per_model}"


def test_changed_source_fetches_into_a_new_cache_dir_and_rolls(kubeconfig, namespace):
    apply(kubeconfig, namespace, exomodel("moved"))
    first = wait_phase(kubeconfig, namespace, "moved", "Ready")
    kubectl(
        kubeconfig, "patch", "exom", "moved", "-n", namespace, "--type=merge",
        "-p", '{"spec":{"source":{"url":"https://models.example/v2/gemma.gguf"}}}',
    )  # fmt: skip

    def refetched():
        s = model_status(kubeconfig, namespace, "moved")
        moved = s.get("cacheKey") not in (None, first["cacheKey"])
        return moved and s.get("phase") == "Ready" and s.get("observedGeneration") == 2 and s

    second = wait_for(refetched, "a fetch of the new source and Ready again")
    jobs = get_json(kubeconfig, "jobs", "-n", namespace, "-l", "exo.dev/model=moved")["items"]
    assert len(jobs) == 2
    args = runtime_container(get_json(kubeconfig, "deployment", "moved", "-n", namespace))["args"]
    assert args[args.index("--model") + 1] == f"/models/{second['cacheKey']}/gemma.gguf"


def snapshot_versions(kubeconfig, namespace):
    """resourceVersion of the ExoModels and every child: any write changes one."""
    out = {}
    for kind in ("exom", "deployments", "services", "pvc", "jobs"):
        for item in get_json(kubeconfig, kind, "-n", namespace)["items"]:
            out[(kind, item["metadata"]["name"])] = item["metadata"]["resourceVersion"]
    return out


def test_restarting_the_operator_refetches_nothing_and_rolls_nothing(
    kubeconfig, namespace, operator
):
    apply(kubeconfig, namespace, exomodel("steady"))
    wait_phase(kubeconfig, namespace, "steady", "Ready")
    time.sleep(3)  # let the last watch events settle
    before = snapshot_versions(kubeconfig, namespace)
    operator.stop()
    operator.start()
    time.sleep(8)  # the restart's resume handlers and a resync (EXO_RESYNC_SECONDS=5)
    assert snapshot_versions(kubeconfig, namespace) == before


def test_idle_models_see_no_writes(kubeconfig, namespace):
    apply(kubeconfig, namespace, exomodel("idle"))
    wait_phase(kubeconfig, namespace, "idle", "Ready")
    time.sleep(3)  # let the last watch events settle
    before = snapshot_versions(kubeconfig, namespace)
    time.sleep(12)  # more than two resyncs (EXO_RESYNC_SECONDS=5)
    assert snapshot_versions(kubeconfig, namespace) == before


CASES = sorted(CORPUS.glob("*.yaml"))


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message>'"
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_invalid_exomodel_is_refused_with_a_message_naming_the_field(kubeconfig, namespace, case):
    proc = kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(case), check=False)
    assert proc.returncode != 0, f"{case.name} was admitted"
    assert expected_message(case) in proc.stderr, proc.stderr


def test_operator_is_unaffected_by_the_refused_corpus(kubeconfig, namespace, operator):
    for case in CASES:
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(case), check=False)
    apply(kubeconfig, namespace, exomodel("after"))
    wait_phase(kubeconfig, namespace, "after", "Ready")
    assert operator.alive()
