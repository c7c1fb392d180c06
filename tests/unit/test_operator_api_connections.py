"""The operator's API calls share one client, so its connections are reused, not re-made."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from exo_operator import kube
from fixtures.kubeconfig import use_kubeconfig, write_kubeconfig
from kubernetes import client


class CountingApiserver(BaseHTTPRequestHandler):
    """Answers every request with a small object over keep-alive; counts connections."""

    protocol_version = "HTTP/1.1"
    connections = 0

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"kind": "Status", "metadata": {"name": "x"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PATCH = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def apiserver():
    CountingApiserver.connections = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), CountingApiserver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, "https://127.0.0.1:6443")
    use_kubeconfig(monkeypatch, path)


def test_every_api_group_uses_one_client_and_its_pool_of_worker_connections(kubeconfig):
    kube.load_credentials(pool_size=12)
    apis = [client.CoreV1Api(), client.AppsV1Api(), client.BatchV1Api(), client.PolicyV1Api()]
    apis.append(client.CustomObjectsApi())
    shared = {id(api.api_client) for api in apis}
    assert len(shared) == 1
    pool = apis[0].api_client.rest_client.pool_manager
    assert pool.connection_pool_kw["maxsize"] == 12
    assert apis[0].api_client.configuration.host == "https://127.0.0.1:6443"


def test_applies_status_patches_events_and_reads_reuse_one_connection(
    kubeconfig, apiserver, tmp_path
):
    write_kubeconfig(tmp_path / "kubeconfig", apiserver)
    kube.load_credentials(pool_size=4)
    service = {"kind": "Service", "metadata": {"name": "m", "namespace": "ns"}}
    model = {"metadata": {"name": "m", "namespace": "ns", "uid": "u"}}
    for _ in range(3):
        kube.apply(service, "exo-operator")
        kube.annotate("Service", "ns", "m", {"a": "b"}, "exo-operator")
        kube.patch_status("ns", "m", {"phase": "Ready"})
        kube.post_event(model, "Normal", "Ready", "ready")
        kube.read("Service", "ns", "m")
    assert CountingApiserver.connections == 1
