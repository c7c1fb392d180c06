"""The pinned helm, and lookups in the manifests that the chart renders."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from fixtures.kwok import tool_path
from fixtures.paths import REPO_ROOT

CHART = REPO_ROOT / "charts" / "exo-operator"


class Helm:
    """The pinned helm, optionally bound to a kubeconfig."""

    def __init__(self, kubeconfig: Path | None = None) -> None:
        self.binary = tool_path("helm")
        self.kubeconfig = kubeconfig

    def run(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        cmd = [str(self.binary), *args]
        if self.kubeconfig:
            cmd += ["--kubeconfig", str(self.kubeconfig)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(
                f"`helm {' '.join(args)}` exited {result.returncode}:\n{result.stderr.strip()}"
            )
        return result

    def template(self, *values: str, namespace: str = "exo-system") -> list[dict[str, Any]]:
        """The chart rendered with `--set` values, as a list of manifests."""
        sets = [arg for value in values for arg in ("--set", value)]
        out = self.run("template", "exo", str(CHART), "--namespace", namespace, *sets).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def find(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict]:
    """The manifests of one kind (and name)."""
    return [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]


def operator_container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(manifests, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container
