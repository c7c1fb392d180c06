"""The runtime image carries MLX (mlx[cpu] and mlx-lm) next to llama.cpp, and its MLX engine runs.

A pod of the image under test, hardened like the operator's runtime pods (read-only root, HOME
and scratch on /tmp), runs mlx_in_image_check.py: the selector picks MLX for an MLX folder and
`exo-runtime serve` loads it with the MLX engine and answers a completion.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.pod_security import RESTRICTED_POD_SECURITY, hardened_container
from fixtures.waiting import wait_for

pytestmark = pytest.mark.e2e

CHECK_SCRIPT = Path(__file__).with_name("mlx_in_image_check.py")
POD = "runtime-image-mlx-check"


def test_runtime_image_selects_and_serves_an_mlx_folder_on_the_cpu(kubectl, namespace, images):
    container = hardened_container(
        "check", images["runtime"], ["python3", "-c", CHECK_SCRIPT.read_text()]
    )
    # mlx-lm imports transformers: more than the 256Mi a bare check gets.
    container["resources"] = {
        "requests": {"cpu": "10m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }
    container["env"] = [{"name": "HOME", "value": "/tmp"}]
    container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": POD, "namespace": namespace},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": RESTRICTED_POD_SECURITY,
                "automountServiceAccountToken": False,
                "containers": [container],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        }
    )

    def phase() -> str:
        return kubectl.json("get", "pod", POD, "-n", namespace)["status"].get("phase", "")

    wait_for(lambda: phase() in ("Succeeded", "Failed"), "the MLX image check pod finishing", 300)
    logs = kubectl("logs", POD, "-n", namespace)
    assert phase() == "Succeeded", f"the MLX check failed in the image:\n{logs[-4000:]}"
    seen = json.loads(logs.strip().splitlines()[-1])
    assert seen["uid"] == 10001, seen
    assert seen["device"] == "Device(cpu, 0)", seen
    assert seen["compiled"] == pytest.approx([2.0, 5.43656], rel=1e-4), seen
    assert seen["selected"] == "mlx", seen
    assert seen["served_engine"] == "mlx", seen
    assert seen["finish_reason"] in ("stop", "length"), seen
    assert 1 <= seen["completion_tokens"] <= 4, seen
    kubectl("delete", "pod", POD, "-n", namespace, "--wait=false")
