"""The apiserver, not the operator, filters the operator's children out of everyone's workloads.

The operator talks to the kwok apiserver through `kubectl proxy -v=6`, whose client logs the URL
of every request it forwards: the operator's own lists and watches, as the apiserver gets them.
"""

import re
import subprocess
import threading
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from exo_operator.handlers.indexes import CHILD_SELECTOR
from operator_harness import OperatorProcess, apply, exomodel, kubectl, kubectl_binary, wait_phase

pytestmark = pytest.mark.kwok

OPERATOR_ENV = {"EXO_RUNTIME_IMAGE": "exo-runtime:dev"}

# client-go's request log at -v=6, in either of its forms:
#   `] GET https://…/api/v1/pods?…&watch=true 200 OK in 2 milliseconds`
#   `"Response" verb="GET" url="https://…/api/v1/pods?…&watch=true" status="200 OK"`
REQUEST_LINE = re.compile(r'(?:\] |verb=")(?P<verb>[A-Z]+)"? (?:url=")?(?P<url>https?://[^\s"]+)')
SERVING = re.compile(r"Starting to serve on (?P<address>\S+)")
# The collections the operator watches, relative to the namespace it serves.
CHILD_COLLECTIONS = (
    "api/v1/namespaces/{ns}/pods",
    "apis/batch/v1/namespaces/{ns}/jobs",
    "apis/apps/v1/namespaces/{ns}/deployments",
    "apis/apps/v1/namespaces/{ns}/statefulsets",
    "api/v1/namespaces/{ns}/persistentvolumeclaims",
    "api/v1/namespaces/{ns}/services",
    "apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
)


class RecordingProxy:
    """`kubectl proxy` on loopback, keeping the (verb, path, query) of each request it forwards."""

    def __init__(self, kubeconfig: str):
        self.proc = subprocess.Popen(
            [kubectl_binary(), "--kubeconfig", kubeconfig, "proxy",
             "--address=127.0.0.1", "--port=0", "-v=6"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = self.proc.stdout.readline()
        match = SERVING.search(line)
        if not match:
            self.proc.kill()
            raise AssertionError(f"kubectl proxy did not start: {line!r} {self.proc.stderr.read()}")
        self.url = f"http://{match['address']}"
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._record, daemon=True).start()

    def _record(self) -> None:
        for line in self.proc.stderr:
            if m := REQUEST_LINE.search(line):
                url = urlsplit(m["url"])
                with self._lock:
                    self.requests.append((m["verb"], url.path.lstrip("/"), parse_qs(url.query)))

    def gets_of(self, path: str) -> list[dict[str, list[str]]]:
        """The queries of every GET of `path` (lists and watches of a collection)."""
        with self._lock:
            return [query for verb, p, query in self.requests if verb == "GET" and p == path]

    def kubeconfig(self, directory: Path) -> str:
        path = directory / "proxied-kubeconfig.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "proxy", "cluster": {"server": self.url}}],
                    "users": [{"name": "proxy", "user": {}}],
                    "contexts": [
                        {"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}
                    ],
                    "current-context": "proxy",
                }
            )
        )
        return str(path)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def own_namespace(kubeconfig, crd_installed):
    """A namespace served by this test's operator only (the session's operator is not started)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl(kubeconfig, "create", "namespace", name)
    yield name
    kubectl(kubeconfig, "delete", "namespace", name, "--wait=false", check=False)


def test_every_child_list_and_watch_carries_the_managed_by_selector(
    kubeconfig, own_namespace, tmp_path
):
    proxy = RecordingProxy(kubeconfig)
    operator = OperatorProcess(
        proxy.kubeconfig(tmp_path), tmp_path, OPERATOR_ENV, scope=("--namespace", own_namespace)
    )
    try:
        operator.start()
        # Ready means the selected watches still show the operator every child it made.
        apply(kubeconfig, own_namespace, exomodel("chosen", resources={"gpus": 1}))
        wait_phase(kubeconfig, own_namespace, "chosen", "Ready")

        for collection in CHILD_COLLECTIONS:
            path = collection.format(ns=own_namespace)
            queries = proxy.gets_of(path)
            assert any(q.get("watch") == ["true"] for q in queries), f"no watch of {path}"
            selectors = {tuple(q.get("labelSelector", ["(none)"])) for q in queries}
            assert selectors == {(CHILD_SELECTOR,)}, f"{path} was read with {selectors}"
        models = proxy.gets_of(f"apis/exo.dev/v1alpha1/namespaces/{own_namespace}/exomodels")
        assert models, "the operator never watched its ExoModels through the proxy"
        assert all("labelSelector" not in q for q in models), "ExoModels must not be filtered"
    finally:
        operator.stop()
        proxy.stop()
