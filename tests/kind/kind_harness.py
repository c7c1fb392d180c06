"""What the kind tier's tests share: Debian's docker client, a local image with busybox and a
token built here, and one-container pods run to completion."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.kube import Kubectl
from fixtures.waiting import wait_for

BASE_IMAGE = os.environ.get("BASE_IMAGE", "exo-operator/debian:bookworm")
# The local-path helper image that scripts/node-image.sh builds: Debian's static busybox.
BUSYBOX_IMAGE = "docker.io/kindest/local-path-helper:v20241212-8ac705d0"


def docker(*args: str, input: str | None = None) -> str:
    """Runs Debian's docker client (the daemon's API version); fails with its stderr."""
    result = subprocess.run(
        ["/usr/bin/docker", *args], input=input, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        pytest.fail(f"`docker {' '.join(args)}` exited {result.returncode}: {result.stderr}")
    return result.stdout


@contextlib.contextmanager
def token_image(load: Callable[[str], object]) -> Iterator[tuple[str, str]]:
    """A local image built now (never in any registry) and handed to `load` (kind load): the
    Debian base with busybox (for httpd, nc, wget) and a token file; yields (image, token)."""
    token = uuid.uuid4().hex
    image = f"exo-operator/kind-harness:{token[:12]}"
    for needed, how in (
        (BASE_IMAGE, "scripts/base-image.sh"),
        (BUSYBOX_IMAGE, "scripts/node-image.sh"),
    ):
        if subprocess.run(
            ["/usr/bin/docker", "image", "inspect", needed], capture_output=True
        ).returncode:
            pytest.fail(f"local image {needed} is missing: run {how}", pytrace=False)
    dockerfile = (
        f"FROM {BASE_IMAGE}\n"
        f"COPY --from={BUSYBOX_IMAGE} /bin/busybox /bin/\n"
        f"RUN echo {token} > /token\n"
    )
    with tempfile.TemporaryDirectory() as context:
        Path(context, "Dockerfile").write_text(dockerfile)
        env = {"DOCKER_BUILDKIT": "1"}
        result = subprocess.run(
            ["/usr/bin/docker", "build", "-q", "-t", image, context],
            capture_output=True, text=True, timeout=600, env={**os.environ, **env},
        )  # fmt: skip
        if result.returncode != 0:
            pytest.fail(f"building {image} failed: {result.stderr}")
    load(image)
    try:
        yield image, token
    finally:
        subprocess.run(["/usr/bin/docker", "rmi", "-f", image], capture_output=True, check=False)


def pod(name: str, image: str, command: str, on: str | None = None, **spec: Any) -> dict[str, Any]:
    """A one-container pod running `bash -c command` that never pulls its image; `on` pins it to
    a node (through the scheduler, which counts GPUs)."""
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["bash", "-c", command],
    }
    container.update(spec.pop("container", {}))
    placement = {"nodeSelector": {"kubernetes.io/hostname": on}} if on else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"restartPolicy": "Never", **placement, "containers": [container], **spec},
    }


def claimed_volume(
    kubectl: Kubectl,
    namespace: str,
    claim: str,
    access_mode: str = "ReadWriteOnce",
    storage_class: str | None = None,
) -> dict[str, Any]:
    """Applies a 1Mi PersistentVolumeClaim and returns the `pod()` keywords that mount it at
    /data (volume `data`)."""
    spec: dict[str, Any] = {"accessModes": [access_mode]}
    if storage_class:
        spec["storageClassName"] = storage_class
    spec["resources"] = {"requests": {"storage": "1Mi"}}
    manifest = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim},
        "spec": spec,
    }
    kubectl.apply(manifest, namespace)
    return {
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        "container": {"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
    }


def shared_volume(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    """A ReadWriteMany claim `shared` of the `shared` storage class, which pods on any node
    mount at once; returns the `pod()` keywords that mount it at /data."""
    return claimed_volume(kubectl, namespace, "shared", "ReadWriteMany", "shared")


def phase(kubectl: Kubectl, namespace: str, name: str) -> str:
    return kubectl("-n", namespace, "get", "pod", name, "-o", "jsonpath={.status.phase}")


def run_to_completion(kubectl: Kubectl, namespace: str, manifest: dict[str, Any]) -> str:
    """Applies a pod, waits for it to succeed, and returns its log."""
    name = manifest["metadata"]["name"]
    kubectl.apply(manifest, namespace)

    def finished() -> str:
        current = phase(kubectl, namespace, name)
        if current == "Failed":
            log = kubectl("-n", namespace, "logs", name, check=False)
            pytest.fail(f"pod {name} failed; its log: {log}")
        return current == "Succeeded" and current

    wait_for(finished, f"pod {name} to succeed", timeout=120)
    return kubectl("-n", namespace, "logs", name)
