"""The operator's writes to the API: server-side apply of children, status patches, log tails.

Blocking calls of the kubernetes client; handlers run them in threads.
"""

import json
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from exo_operator.model import GROUP, KIND, PLURAL, VERSION

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


def load_credentials(pool_size: int) -> None:
    """In-cluster service account when in a pod, else the kubeconfig ($KUBECONFIG)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    # One connection per worker thread, or calls queue for a free connection.
    configuration.connection_pool_maxsize = pool_size
    client.Configuration.set_default(configuration)


def _patchers() -> dict[str, Any]:
    core, apps, batch = client.CoreV1Api(), client.AppsV1Api(), client.BatchV1Api()
    return {
        "PersistentVolumeClaim": core.patch_namespaced_persistent_volume_claim,
        "Service": core.patch_namespaced_service,
        "Deployment": apps.patch_namespaced_deployment,
        "Job": batch.patch_namespaced_job,
    }


def apply(manifest: dict[str, Any], field_manager: str) -> None:
    """Server-side apply with one field manager, forcing ownership of the fields it sets."""
    patch = _patchers()[manifest["kind"]]
    meta = manifest["metadata"]
    patch(
        meta["name"],
        meta["namespace"],
        manifest,
        field_manager=field_manager,
        force=True,
        _content_type=APPLY,
        _preload_content=False,
    )


def patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge `status` into the ExoModel's status subresource."""
    client.CustomObjectsApi().patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE
    )


def post_event(body: dict[str, Any], type: str, reason: str, message: str) -> None:
    """Records an Event on the ExoModel (what `kubectl describe exom` shows)."""
    meta = body["metadata"]
    now = datetime.now(UTC)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
        involved_object=client.V1ObjectReference(
            api_version=f"{GROUP}/{VERSION}",
            kind=KIND,
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
        ),
        type=type,
        reason=reason,
        message=message[:1024],
        first_timestamp=now,
        last_timestamp=now,
        count=1,
        source=client.V1EventSource(component="exo-operator"),
        reporting_component="exo.dev/exo-operator",
    )
    client.CoreV1Api().create_namespaced_event(meta["namespace"], event)


def log_tail(namespace: str, pod: str, lines: int = 5) -> str | None:
    """The last lines of a pod's log, or None when the kubelet cannot give them (yet)."""
    try:
        return client.CoreV1Api().read_namespaced_pod_log(
            pod, namespace, tail_lines=lines, _request_timeout=5
        )
    except (ApiException, HTTPError, OSError):
        return None


def describe_api_error(error: ApiException) -> str:
    """The apiserver's own message for a refused write, without the HTTP noise."""
    try:
        return json.loads(error.body).get("message") or str(error.reason)
    except (TypeError, ValueError):
        return f"{error.status} {error.reason}"
