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
    # Without a default ApiClient, every `CoreV1Api()` builds its own, with a connection pool of
    # its own: each call would pay a new TCP and TLS handshake, on both ends.
    client.ApiClient.set_default(client.ApiClient(configuration))


def _patchers() -> dict[str, Any]:
    core, apps, batch = client.CoreV1Api(), client.AppsV1Api(), client.BatchV1Api()
    return {
        "PersistentVolumeClaim": core.patch_namespaced_persistent_volume_claim,
        "Service": core.patch_namespaced_service,
        "Deployment": apps.patch_namespaced_deployment,
        "StatefulSet": apps.patch_namespaced_stateful_set,
        "Job": batch.patch_namespaced_job,
        "PodDisruptionBudget": client.PolicyV1Api().patch_namespaced_pod_disruption_budget,
    }


def _readers() -> dict[str, Any]:
    core, apps, batch = client.CoreV1Api(), client.AppsV1Api(), client.BatchV1Api()
    return {
        "PersistentVolumeClaim": core.read_namespaced_persistent_volume_claim,
        "Service": core.read_namespaced_service,
        "Deployment": apps.read_namespaced_deployment,
        "StatefulSet": apps.read_namespaced_stateful_set,
        "Job": batch.read_namespaced_job,
        "PodDisruptionBudget": client.PolicyV1Api().read_namespaced_pod_disruption_budget,
    }


def read(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The object as the apiserver holds it now, or None when there is none."""
    try:
        response = _readers()[kind](name, namespace, _preload_content=False)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return json.loads(response.data)


def delete_job(namespace: str, name: str, uid: str) -> None:
    """Deletes one Job (that uid only, never a newer one of the same name) and, after it, its pods.

    A Job already gone is not an error.
    """
    options = client.V1DeleteOptions(
        propagation_policy="Background", preconditions=client.V1Preconditions(uid=uid)
    )
    try:
        client.BatchV1Api().delete_namespaced_job(name, namespace, body=options)
    except ApiException as error:
        if error.status not in (404, 409):  # gone, or the name is another Job's by now
            raise


def annotate(kind: str, namespace: str, name: str, annotations: dict[str, str], field_manager: str):
    """Merges annotations into a child (a merge patch: nothing else of it changes)."""
    patch = _patchers()[kind]
    _finish(
        patch(
            name,
            namespace,
            {"metadata": {"annotations": annotations}},
            field_manager=field_manager,
            _content_type=MERGE,
            _preload_content=False,
        )
    )


def secret_changed_at(namespace: str, name: str) -> datetime | None:
    """When the Secret's data last changed (its managers' latest write), None when it is absent."""
    try:
        secret = client.CoreV1Api().read_namespaced_secret(name, namespace, _preload_content=False)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    meta = json.loads(secret.data)["metadata"]
    times = [m.get("time") for m in meta.get("managedFields") or []]
    times.append(meta.get("creationTimestamp"))
    return max(datetime.fromisoformat(t.replace("Z", "+00:00")) for t in times if t)


def pod_warnings(namespace: str, pod: str, uid: str) -> list[dict[str, Any]]:
    """The Warning Events of one pod (the kubelet's and the attach controller's words)."""
    selector = (
        f"involvedObject.kind=Pod,involvedObject.name={pod},involvedObject.uid={uid},type=Warning"
    )
    response = client.CoreV1Api().list_namespaced_event(
        namespace, field_selector=selector, _preload_content=False, _request_timeout=5
    )
    return json.loads(response.data).get("items") or []


def delete(kind: str, namespace: str, name: str) -> None:
    """Deletes a child the plan dropped; its pods go with it, and one already gone is fine."""
    deleters = {
        "Job": client.BatchV1Api().delete_namespaced_job,
        "StatefulSet": client.AppsV1Api().delete_namespaced_stateful_set,
        "Deployment": client.AppsV1Api().delete_namespaced_deployment,
        "PodDisruptionBudget": client.PolicyV1Api().delete_namespaced_pod_disruption_budget,
    }
    try:
        # A Job's API default orphans its pods: Background deletes them too.
        deleters[kind](name, namespace, propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise


def _finish(reply: Any) -> None:
    """Ends a reply read as raw (`_preload_content=False`) and not parsed: its connection goes
    back to the pool only once the body is read, else every call pays a new TLS handshake."""
    reply.drain_conn()
    reply.release_conn()


def apply(manifest: dict[str, Any], field_manager: str) -> None:
    """Server-side apply with one field manager, forcing ownership of the fields it sets."""
    patch = _patchers()[manifest["kind"]]
    meta = manifest["metadata"]
    _finish(
        patch(
            meta["name"],
            meta["namespace"],
            manifest,
            field_manager=field_manager,
            force=True,
            _content_type=APPLY,
            _preload_content=False,
        )
    )


def patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge `status` into the ExoModel's status subresource."""
    reply = client.CustomObjectsApi().patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        name,
        {"status": status},
        _content_type=MERGE,
        _preload_content=False,  # the reply is never read: do not parse it
    )
    _finish(reply)


def post_event(
    body: dict[str, Any], type: str, reason: str, message: str, at: datetime | None = None
) -> None:
    """Records an Event on the ExoModel (what `kubectl describe exom` shows), as of `at`."""
    meta = body["metadata"]
    now = at or datetime.now(UTC)
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
    # The reply is never read; turning it back into client models would cost more than the call.
    _finish(
        client.CoreV1Api().create_namespaced_event(meta["namespace"], event, _preload_content=False)
    )


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
