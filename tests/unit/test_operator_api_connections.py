"""The operator's API calls share one client, so its connections are reused, not re-made."""

import pytest
import yaml
from exo_operator import kube
from kubernetes import client
from kubernetes.config import kube_config


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    # The client reads $KUBECONFIG once, at import.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.setattr(client.ApiClient, "_default", None)
    monkeypatch.setattr(client.Configuration, "_default", None)


def test_every_api_group_uses_one_client_and_its_pool_of_worker_connections(kubeconfig):
    kube.load_credentials(pool_size=12)
    apis = [client.CoreV1Api(), client.AppsV1Api(), client.BatchV1Api(), client.PolicyV1Api()]
    apis.append(client.CustomObjectsApi())
    shared = {id(api.api_client) for api in apis}
    assert len(shared) == 1
    pool = apis[0].api_client.rest_client.pool_manager
    assert pool.connection_pool_kw["maxsize"] == 12
    assert apis[0].api_client.configuration.host == "https://127.0.0.1:6443"
