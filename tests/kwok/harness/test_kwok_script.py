"""scripts/kwok.sh as a user meets it: a port in use is refused, `up` is idempotent and recovers
from a killed run, `down` leaves no process, port or file behind (bad settings: the unit tier's
test_kwok_settings.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from fixtures.descriptors import holders
from fixtures.kube import EXPORT_PREFIX, Kubectl, tool_path
from fixtures.kwok import kwok_script
from fixtures.paths import EXO_CACHE

pytestmark = pytest.mark.kwok

KWOK_WORKDIR = EXO_CACHE / "kwok"


def test_apiserver_port_in_use_is_refused_before_anything_starts() -> None:
    tool_path("kwokctl")
    name = f"port-{uuid.uuid4().hex[:6]}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = kwok_script("up", KWOK_CLUSTER=name, KWOK_APISERVER_PORT=str(port))
    assert result.returncode != 0
    assert f"port {port} (KWOK_APISERVER_PORT) is in use" in result.stderr
    assert not (KWOK_WORKDIR / "clusters" / name).exists()
    assert not (KWOK_WORKDIR / f"{name}.kwokctl.yaml").exists()


def component_pids(cluster_dir: Path) -> list[int]:
    """The control plane's processes, which kwokctl runs from the cluster's bin/ folder."""
    found = subprocess.run(
        ["pgrep", "-f", f"^{cluster_dir}/bin/"], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in found.stdout.split()]


def kubeconfig_of(result: subprocess.CompletedProcess[str]) -> Path:
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(EXPORT_PREFIX), result.stdout
    return Path(lines[0].removeprefix(EXPORT_PREFIX))


def apiserver_port(kubectl: Kubectl) -> int:
    server = kubectl("config", "view", "-o", "jsonpath={.clusters[0].cluster.server}")
    port = urlsplit(server).port
    assert port, f"no port in the kubeconfig's server {server!r}"
    return port


def component_ports(cluster_dir: Path) -> set[int]:
    """Every port kwokctl gave the cluster's components (etcd's two, the apiserver's, ...)."""
    docs = yaml.safe_load_all((cluster_dir / "kwok.yaml").read_text())
    (options,) = [
        doc["options"] for doc in docs if doc and doc.get("kind") == "KwokctlConfiguration"
    ]
    # `securePort: true` ends in Port too, and a bool is an int to isinstance.
    return {value for key, value in options.items() if key.endswith("Port") and type(value) is int}


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_up_reuses_recovers_from_a_killed_run_and_down_leaves_nothing() -> None:
    name = f"script-{uuid.uuid4().hex[:6]}"
    cluster_dir = KWOK_WORKDIR / "clusters" / name
    settings = {"KWOK_CLUSTER": name, "KWOK_NODES": "2", "KWOK_CPU_NODES": "0"}
    try:
        kubeconfig = kubeconfig_of(kwok_script("up", **settings))
        assert kubeconfig.is_file()
        kubectl = Kubectl(kubeconfig)
        assert len(kubectl.json("get", "nodes")["items"]) == 2
        # The control plane started under the cluster's lock must not keep it.
        assert not holders(str(KWOK_WORKDIR / "locks" / name))

        started = time.monotonic()
        assert kubeconfig_of(kwok_script("up", **settings)) == kubeconfig
        assert time.monotonic() - started < 10, "reusing a running cluster should take seconds"

        # A killed run: every component dies at once and leaves its files and pid files.
        pids = component_pids(cluster_dir)
        assert len(pids) == 5, pids  # etcd, apiserver, controller-manager, scheduler, kwok
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert kwok_script("status", **settings).returncode == 1
        recovered = kwok_script("up", **settings)
        assert "leftover" in recovered.stderr
        assert kubeconfig_of(recovered) == kubeconfig
        kubectl("wait", "--for=condition=Ready", "nodes", "--all", "--timeout=30s")
        ports = component_ports(cluster_dir)
        assert apiserver_port(kubectl) in ports and len(ports) == 6, ports
    finally:
        down = kwok_script("down", **settings)
    assert down.returncode == 0, down.stderr
    assert component_pids(cluster_dir) == []
    assert not cluster_dir.exists()
    assert not (KWOK_WORKDIR / f"{name}.kwokctl.yaml").exists()
    # `down` returns once every component has let go of its ports, not as they exit.
    assert [port for port in sorted(ports) if listening(port)] == []
    assert kwok_script("status", **settings).returncode == 1
