"""The operator as its own process against a real apiserver, and small kubectl/wait helpers."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from fixtures.kube import Kubectl, tool_path
from fixtures.net import free_port
from fixtures.paths import REPO_ROOT
from fixtures.waiting import wait_for

REPO = REPO_ROOT
CRD = REPO / "crds" / "exo.dev_exomodels.yaml"


def kubectl_binary() -> str:
    """The pinned kubectl that `make tools` builds."""
    return str(tool_path("kubectl"))


def kubectl(
    kubeconfig: str, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Runs kubectl as a user would; returns the completed process."""
    return Kubectl(kubeconfig).run(*args, input=stdin, check=check)


def get_json(kubeconfig: str, *args: str) -> dict[str, Any] | None:
    proc = kubectl(kubeconfig, "get", *args, "-o", "json", check=False)
    if proc.returncode != 0:
        if "NotFound" in proc.stderr or "not found" in proc.stderr:
            return None
        raise AssertionError(proc.stderr)
    return json.loads(proc.stdout)


class OperatorProcess:
    """`exo-operator run` in a subprocess, with its log in a file."""

    def __init__(
        self,
        kubeconfig: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        scope: tuple[str, ...] = ("--all-namespaces",),
    ):
        self.kubeconfig = kubeconfig
        self.scope = scope
        self.log_path = log_dir / "operator.log"
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.metrics_port = 0

    def start(self) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        exe = Path(sys.executable).parent / "exo-operator"
        if not exe.exists():
            raise RuntimeError(f"{exe} is missing: run `make venv` (it installs the project)")
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, **self.extra_env}
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [str(exe), "run", *self.scope, "--standalone",
             "--liveness", f"http://127.0.0.1:{self.port}/healthz",
             "--metrics-port", str(self.metrics_port), "--metrics-address", "127.0.0.1"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(self.alive, "the operator's liveness endpoint", timeout=60)

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited; its log:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        """The operator's Prometheus exposition text, scraped over loopback."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under it."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


URL = "https://models.example/gemma-3-270m-Q4_K_M.gguf"


def exomodel(name: str, **spec) -> str:
    body = {
        "apiVersion": "exo.dev/v1alpha1",
        "kind": "ExoModel",
        "metadata": {"name": name},
        "spec": {"source": {"url": URL}, **spec},
    }
    return yaml.safe_dump(body)


def apply(kubeconfig, namespace, manifest):
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=manifest)


def model_status(kubeconfig, namespace, name):
    return (get_json(kubeconfig, "exom", name, "-n", namespace) or {}).get("status") or {}


def condition(status, kind):
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def model_events(kubeconfig, namespace, name, reason, timeout=30):
    """The ExoModel's Events once one with `reason` is among them (the operator posts them just
    after the status write they belong to)."""

    def probe():
        items = get_json(
            kubeconfig, "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
        )["items"]
        return items if reason in {e["reason"] for e in items} else None

    return wait_for(probe, f"an Event {reason} on ExoModel {name}", timeout)


def wait_phase(kubeconfig, namespace, name, phase, timeout=60):
    def probe():
        status = model_status(kubeconfig, namespace, name)
        return status if status.get("phase") == phase else None

    try:
        return wait_for(probe, f"ExoModel {name} phase {phase}", timeout)
    except AssertionError as error:
        raise AssertionError(
            f"{error}\nstatus: {model_status(kubeconfig, namespace, name)}"
        ) from None
