"""A fetch starts again as soon as what stopped it changes, and the cache counts only where proven.

kwok has no kubelet: where a test needs what a real container leaves behind (a fetch refused
for lack of access, a runtime refusing an unverified cache), it writes that pod status, the
one thing in this tier that cannot be caused for real.
"""

import json
import time
from datetime import UTC, datetime

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
    wait_phase,
)

pytestmark = pytest.mark.kwok

UNVERIFIED = (
    "exo-runtime: load failed: cache not verified: "
    "/models/k/gemma.gguf has no gemma.gguf.verified.json"
)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def jobs_of(kubeconfig, namespace, name):
    return get_json(kubeconfig, "jobs", "-n", namespace, "-l", f"exo.dev/model={name}")["items"]


def one_job(kubeconfig, namespace, name):
    jobs = jobs_of(kubeconfig, namespace, name)
    return jobs[0] if len(jobs) == 1 else None


def patch_status(kubeconfig, namespace, pod, status):
    kubectl(
        kubeconfig, "patch", "pod", pod, "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": status}),
    )  # fmt: skip


def test_a_fetch_refused_for_its_token_starts_again_once_the_secret_is_fixed(kubeconfig, namespace):
    kubectl(
        kubeconfig, "create", "secret", "generic", "hf", "-n", namespace,
        "--from-literal=token=wrong",
    )  # fmt: skip
    source = {"huggingFace": {"repo": "org/gated", "file": "m.gguf",
                              "tokenSecretRef": {"name": "hf", "key": "token"}}}  # fmt: skip
    # No node has this label, so the fetch pod stays unscheduled and kwok leaves it alone.
    nowhere = {"exo.dev/test": "nowhere"}
    apply(kubeconfig, namespace, exomodel("gated", source=source, nodeSelector=nowhere))
    pod = wait_for(
        lambda: [
            p
            for p in get_json(kubeconfig, "pods", "-n", namespace, "-l", "exo.dev/component=fetch")[
                "items"
            ]
            if "hf://org/gated/m.gguf@main" in p["spec"]["containers"][0]["args"]
        ],
        "the fetch pod of the Hugging Face source",
    )[0]
    first = get_json(kubeconfig, "job", pod["metadata"]["labels"]["job-name"], "-n", namespace)
    refused = json.dumps({"event": "failed", "reason": "Unauthorized",
                          "error": "answered 401 Unauthorized: set HF_TOKEN"})  # fmt: skip
    patch_status(kubeconfig, namespace, pod["metadata"]["name"], {
        "phase": "Failed",
        "containerStatuses": [{
            "name": "fetch", "image": "exo-runtime:dev", "imageID": "", "ready": False,
            "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": refused}},
        }],
    })  # fmt: skip
    status = wait_for(
        lambda: (
            (s := model_status(kubeconfig, namespace, "gated")).get("phase") == "Failed"
            and "Unauthorized" in s.get("message", "")
            and s
        ),
        "the model to fail for lack of access",
    )
    assert condition(status, "ModelCached")["reason"] == "FetchFailed"
    time.sleep(4)  # more than one Secret check: an unchanged Secret retries nothing
    assert one_job(kubeconfig, namespace, "gated")["metadata"]["uid"] == first["metadata"]["uid"]

    time.sleep(1)  # the Secret's change lands in a later second than the Job's creation
    fixed = time.monotonic()
    kubectl(
        kubeconfig, "patch", "secret", "hf", "-n", namespace, "--type=merge",
        "-p", json.dumps({"stringData": {"token": "right"}}),
    )  # fmt: skip
    retried = wait_for(
        lambda: (
            (j := one_job(kubeconfig, namespace, "gated"))
            and j["metadata"]["uid"] != first["metadata"]["uid"]
            and j
        ),
        "a new fetch Job in place of the failed one",
        timeout=20,
    )
    took = time.monotonic() - fixed
    assert retried["metadata"]["name"] == first["metadata"]["name"]
    assert took < 10, f"the retry took {took:.1f} s"
    wait_for(
        lambda: model_status(kubeconfig, namespace, "gated").get("phase") != "Failed",
        "the model to leave Failed",
    )


def test_a_recreated_cache_claim_is_fetched_again(kubeconfig, namespace):
    apply(kubeconfig, namespace, exomodel("refill"))
    ready = wait_phase(kubeconfig, namespace, "refill", "Ready")
    claim = get_json(kubeconfig, "pvc", "refill-cache", "-n", namespace)
    annotations = claim["metadata"]["annotations"]
    assert annotations["exo.dev/verified-cache-key"] == ready["cacheKey"]
    first_job = one_job(kubeconfig, namespace, "refill")

    # A claim in use cannot go: scale to zero first, as a user replacing the volume would.
    kubectl(kubeconfig, "scale", "exom", "refill", "-n", namespace, "--replicas=0")
    wait_for(
        lambda: (
            not get_json(
                kubeconfig,
                "pods",
                "-n",
                namespace,
                "-l",
                "exo.dev/model=refill,exo.dev/component=runtime",
            )["items"]
        ),
        "the runtime pods to go",
    )
    # kwok keeps the finished fetch Job's pod Running, and a Running pod holds its claim (the
    # pvc-protection finalizer): remove it too, as the runtime pods went.
    kubectl(
        kubeconfig, "delete", "pods", "-n", namespace, "-l", "exo.dev/model=refill",
        "--grace-period=0", "--force",
    )  # fmt: skip
    kubectl(kubeconfig, "delete", "pvc", "refill-cache", "-n", namespace, "--wait=false")

    def what_holds_the_claim() -> str:
        # pvc-protection keeps it while any pod names it: show which, if one still does.
        pods = get_json(kubeconfig, "pods", "-n", namespace) or {"items": []}
        return "pods: " + json.dumps(
            [
                (p["metadata"]["name"], p["status"].get("phase"), p["metadata"].get("labels"))
                for p in pods["items"]
            ]
        )

    # Generous: on a loaded machine the controller-manager's pvc-protection takes its time.
    new_claim = wait_for(
        lambda: (
            (c := get_json(kubeconfig, "pvc", "refill-cache", "-n", namespace))
            and c["metadata"]["uid"] != claim["metadata"]["uid"]
            and c
        ),
        "the claim deleted and made anew by the operator",
        timeout=180,
        explain=what_holds_the_claim,
    )
    refetch = wait_for(
        lambda: (
            (j := one_job(kubeconfig, namespace, "refill"))
            and j["metadata"]["uid"] != first_job["metadata"]["uid"]
            and j
        ),
        "a fetch into the new claim",
    )
    assert refetch["metadata"]["creationTimestamp"] >= new_claim["metadata"]["creationTimestamp"]
    kubectl(kubeconfig, "scale", "exom", "refill", "-n", namespace, "--replicas=1")
    wait_phase(kubeconfig, namespace, "refill", "Ready")
    stamped = get_json(kubeconfig, "pvc", "refill-cache", "-n", namespace)["metadata"]
    assert stamped["uid"] == new_claim["metadata"]["uid"]
    assert stamped["annotations"]["exo.dev/verified-cache-key"] == ready["cacheKey"]


def test_a_runtime_that_finds_the_cache_unverified_sends_the_model_back_to_downloading(
    kubeconfig, namespace
):
    apply(kubeconfig, namespace, exomodel("unverified"))
    wait_phase(kubeconfig, namespace, "unverified", "Ready")
    first_job = one_job(kubeconfig, namespace, "unverified")
    # A runtime finds the cache unverified only after the fetch proved it, and Kubernetes
    # times both in whole seconds: a refutation in the proof's own second cannot be told from
    # one before it, so this one comes a second later, as a real runtime's load would.
    status = first_job.get("status") or {}
    proven_at = status.get("completionTime") or first_job["metadata"]["creationTimestamp"]
    wait_for(lambda: now() > proven_at, "a second after the fetch Job completed", timeout=5)
    pod = get_json(
        kubeconfig,
        "pods",
        "-n",
        namespace,
        "-l",
        "exo.dev/model=unverified,exo.dev/component=runtime",
    )["items"][0]
    # What `exo-runtime serve --require-verified` leaves behind on a cache without its record.
    patch_status(kubeconfig, namespace, pod["metadata"]["name"], {
        "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{
            "name": "runtime", "image": "exo-runtime:dev", "imageID": "", "ready": False,
            "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                         "message": UNVERIFIED, "finishedAt": now()}},
        }],
    })  # fmt: skip
    wait_for(
        lambda: (
            (j := one_job(kubeconfig, namespace, "unverified"))
            and j["metadata"]["uid"] != first_job["metadata"]["uid"]
        ),
        "a new fetch Job in place of the one the runtime refuted",
    )
    events = model_events(kubeconfig, namespace, "unverified", "CacheNotVerified")
    unverified = [e["message"] for e in events if e["reason"] == "CacheNotVerified"]
    assert any(m.startswith("Downloading:") for m in unverified), unverified
    assert "LoadFailed" not in {e["reason"] for e in events}
    # The refetched cache is proven again; the replica that refused it is replaced.
    kubectl(kubeconfig, "delete", "pod", pod["metadata"]["name"], "-n", namespace, "--wait=false")
    wait_phase(kubeconfig, namespace, "unverified", "Ready")
