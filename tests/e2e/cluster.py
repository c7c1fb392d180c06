"""Helpers of the e2e tier: helm, an ExoModel status watch, port-forwards."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fixtures.kwok import Kubectl, tool_path
from fixtures.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "exo-operator"
EXAMPLES = REPO_ROOT / "examples"


class Helm:
    """The pinned helm bound to one kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        self.binary = tool_path("helm")
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        cmd = [str(self.binary), "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(
                f"`helm {' '.join(args)}` exited {result.returncode}:\n{result.stderr}"
            )
        return result.stdout


class StatusWatch:
    """Every status an ExoModel takes, from a `kubectl get --watch` stream (no write is missed).

    It may start before the ExoModel exists: the watch is on a list filtered by name.
    """

    def __init__(self, kubectl: Kubectl, namespace: str, name: str) -> None:
        cmd = [
            str(kubectl.binary), "--kubeconfig", str(kubectl.kubeconfig), "-n", namespace,
            "get", "exomodels", "--field-selector", f"metadata.name={name}",
            "--watch", "--output-watch-events", "-o", "json",
        ]  # fmt: skip
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def port_forward(kubectl: Kubectl, namespace: str, target: str, port: int) -> Iterator[int]:
    """`kubectl port-forward` of target's port to a free port on 127.0.0.1, for the block."""
    local = free_port()
    cmd = [
        str(kubectl.binary), "--kubeconfig", str(kubectl.kubeconfig), "-n", namespace,
        "port-forward", "--address", "127.0.0.1", target, f"{local}:{port}",
    ]  # fmt: skip
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


def hardened_container(name: str, image: str, command: list[str]) -> dict[str, Any]:
    """A container that Pod Security "restricted" admits."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
    }


RESTRICTED_POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
