"""Helpers of the e2e tier: an ExoModel status watch, port-forwards, ExoModels and their pods."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from fixtures.kube import Kubectl
from fixtures.net import free_port
from fixtures.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"


class StatusWatch:
    """Every status an ExoModel takes, from a `kubectl get --watch` stream (no write is missed).

    It may start before the ExoModel exists: the watch is on a list filtered by name.
    """

    def __init__(self, kubectl: Kubectl, namespace: str, name: str) -> None:
        cmd = kubectl.command(
            "-n", namespace, "get", "exomodels", "--field-selector", f"metadata.name={name}",
            "--watch", "--output-watch-events", "-o", "json",
        )  # fmt: skip
        self.statuses: list[dict[str, Any]] = []
        self._process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        decoder, buffer = json.JSONDecoder(), ""
        for line in self._process.stdout:
            buffer += line
            with contextlib.suppress(json.JSONDecodeError):
                event, end = decoder.raw_decode(buffer.strip())
                buffer = buffer.strip()[end:]
                self.statuses.append((event.get("object") or {}).get("status") or {})

    def phases(self) -> list[str]:
        """The phases seen, in order, each once per run of equal phases."""
        seen: list[str] = []
        for status in self.statuses:
            phase = status.get("phase")
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
        return seen

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


@contextlib.contextmanager
def port_forward(kubectl: Kubectl, namespace: str, target: str, port: int) -> Iterator[int]:
    """`kubectl port-forward` of target's port to a free port on 127.0.0.1, for the block."""
    local = free_port()
    cmd = kubectl.command(
        "-n", namespace, "port-forward", "--address", "127.0.0.1", target, f"{local}:{port}"
    )
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"kubectl port-forward {target} exited: {process.stderr.read()}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local), 1):
                return True
            return False

        wait_for(listening, f"port-forward to {target}", 30)
        yield local
    finally:
        process.terminate()
        process.wait(timeout=10)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    """The status condition of one type ({} when absent)."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


# An ExoModel's life, for tests that make one of their own (test_chaos, test_rollout, ...).
CPU_EXAMPLE = EXAMPLES / "cpu-gemma-3-270m.yaml"
READY_TIMEOUT = 600
# Room for two runtime replicas (and a surge pod) beside the control plane on a 2-core kind node.
E2E_RESOURCES = {"gpus": 0, "cpu": "300m", "memory": "1Gi"}


# A ReadWriteMany cache from the kind node image's `shared` class, for models with replicas > 1
# (admission refuses them on a ReadWriteOnce cache).
SHARED_CACHE = {"storageClassName": "shared", "accessMode": "ReadWriteMany"}


def cpu_exomodel(name: str, url: str, sha256: str, **spec: Any) -> dict[str, Any]:
    """The CPU example pointed at an in-cluster URL, under the test's name, with its cache going
    when the ExoModel goes; `spec` overrides top-level spec fields."""
    model = yaml.safe_load(CPU_EXAMPLE.read_text())
    model["metadata"] = {"name": name}
    model["spec"]["source"] = {"url": url, "sha256": sha256}
    model["spec"]["storage"]["retainOnDelete"] = False
    model["spec"]["resources"] = dict(E2E_RESOURCES)
    model["spec"].update(spec)
    return model


def exomodel_status(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return kubectl.json("get", "exomodel", name, "-n", namespace).get("status") or {}


def model_pods(kubectl: Kubectl, namespace: str, name: str, component: str) -> list[dict[str, Any]]:
    """The ExoModel's pods of one component (runtime or fetch), oldest first."""
    selector = f"exo.dev/model={name},exo.dev/component={component}"
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"])


def explain_model(kubectl: Kubectl, namespace: str, name: str) -> Callable[[], str]:
    """What a failed wait on an ExoModel should show: its status and its children's state."""
    return lambda: (
        f"status: {json.dumps(exomodel_status(kubectl, namespace, name), indent=1)}\n"
        + kubectl("get", "jobs,deployments,pods,pvc", "-n", namespace, "-o", "wide", check=False)
        + kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False)[-3000:]
    )


def wait_until_ready(kubectl: Kubectl, namespace: str, name: str, what: str) -> dict[str, Any]:
    """Waits for phase Ready and returns the status; phase Failed fails at once, with why."""

    def ready() -> dict[str, Any] | None:
        status = exomodel_status(kubectl, namespace, name)
        if status.get("phase") == "Failed":
            raise AssertionError(f"{what}: the ExoModel Failed: {status.get('message')}")
        return status if status.get("phase") == "Ready" else None

    return wait_for(ready, what, READY_TIMEOUT, explain_model(kubectl, namespace, name))


def delete_exomodel(kubectl: Kubectl, namespace: str, name: str) -> None:
    """Deletes an ExoModel and waits, so that its pods free the node for the next test."""
    kubectl(
        "delete", "exomodel", name, "-n", namespace, "--ignore-not-found", "--wait=true",
        "--timeout=120s", timeout=150, check=False,
    )  # fmt: skip
