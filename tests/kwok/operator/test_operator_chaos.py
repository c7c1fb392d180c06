"""kill -9 at random moments while models are created and changed: every model still converges.

20 reconciles' worth of work (12 new models, then 8 spec changes) while a thread kills the
operator three times at random moments and starts it again. A watch records every status
the models go through, to show that none went back from Ready except by a spec change.
"""

import json
import random
import threading
import time

import pytest
from fixtures.waiting import wait_for
from kubernetes import client, config, watch
from operator_harness import apply, exomodel, get_json, kubectl
from urllib3.exceptions import ProtocolError

pytestmark = pytest.mark.kwok

MODELS = [f"c{i}" for i in range(12)]
CHANGED = MODELS[:8]


class PhaseRecorder:
    """Every (model, observedGeneration, phase) the ExoModels' watch shows, in order."""

    def __init__(self, kubeconfig: str, namespace: str) -> None:
        self.api = client.CustomObjectsApi(config.new_client_from_config(kubeconfig))
        self.namespace = namespace
        self.seen: list[tuple[str, int | None, str | None, str]] = []
        self._watch = watch.Watch()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._watch.stop()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        # The apiserver may end a watch at any time (the operator's restarts load it): resume
        # from the last version seen, so no transition between two streams goes unrecorded.
        version = None
        while not self._stopped.is_set():
            stream = self._watch.stream(
                self.api.list_namespaced_custom_object, "exo.dev", "v1alpha1", self.namespace,
                "exomodels", timeout_seconds=300, resource_version=version,
            )  # fmt: skip
            try:
                for event in stream:
                    obj = event["object"]
                    status = obj.get("status") or {}
                    version = obj["metadata"]["resourceVersion"]
                    self.seen.append(
                        (
                            obj["metadata"]["name"],
                            status.get("observedGeneration"),
                            status.get("phase"),
                            version,
                        )
                    )
            except ProtocolError:
                continue


def flaps(seen):
    """Models that left Ready for a non-Ready phase while describing the same generation."""
    ready_at: dict[str, set[int]] = {}
    out = []
    for name, generation, phase, _ in seen:
        if phase == "Ready":
            ready_at.setdefault(name, set()).add(generation)
        elif generation in ready_at.get(name, set()):
            out.append((name, generation, phase))
    return out


def converged(kubeconfig, namespace):
    items = get_json(kubeconfig, "exom", "-n", namespace)["items"]
    done = [
        m
        for m in items
        if (m.get("status") or {}).get("phase") == "Ready"
        and m["status"].get("observedGeneration") == m["metadata"]["generation"]
    ]
    return len(done) == len(MODELS) and items


def test_operator_killed_at_random_converges_without_duplicates_or_flapping(
    kubeconfig, namespace, operator
):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    recorder = PhaseRecorder(kubeconfig, namespace)
    recorder.start()
    kills: list[float] = []

    def killer():
        for _ in range(3):
            time.sleep(rng.uniform(0.2, 4.0))
            kills.append(time.monotonic())
            operator.kill()
            operator.start()

    started = time.monotonic()
    chaos = threading.Thread(target=killer)
    chaos.start()
    apply(kubeconfig, namespace, "---\n".join(exomodel(n) for n in MODELS))
    time.sleep(rng.uniform(0.5, 3.0))
    for i, name in enumerate(CHANGED):
        kubectl(
            kubeconfig, "patch", "exom", name, "-n", namespace, "--type=merge",
            "-p", json.dumps({"spec": {"engineArgs": {"contextLength": 1024 * (i + 2)}}}),
        )  # fmt: skip
        time.sleep(rng.uniform(0, 0.5))
    chaos.join()
    try:
        wait_for(
            lambda: converged(kubeconfig, namespace), "every model Ready at its generation", 75
        )
        took = time.monotonic() - started

        for kind in ("deployments", "services", "jobs", "pvc"):
            items = get_json(kubeconfig, kind, "-n", namespace, "-l", "exo.dev/model")["items"]
            per_model = sorted(i["metadata"]["labels"]["exo.dev/model"] for i in items)
            assert per_model == sorted(MODELS), f"{kind}: {per_model}"
        for name in CHANGED:
            dep = get_json(kubeconfig, "deployment", name, "-n", namespace)
            args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
            assert "--context-length" in args, name

        settled = len(recorder.seen)
        time.sleep(6)  # a resync (EXO_RESYNC_SECONDS=5): a settled status stays put
        assert recorder.seen[settled:] == [], recorder.seen[settled:]
    finally:
        recorder.stop()
    assert flaps(recorder.seen) == [], f"seed {seed}"
    assert len(kills) == 3
    print(f"seed {seed}: converged {took:.1f} s after the first apply, through 3 kills")
