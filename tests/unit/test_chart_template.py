"""The chart lints clean and renders what each value asks for: the spec of charts/exo-operator.

`helm lint` and `helm template` need no cluster (the pinned helm only); the kwok tier installs
the chart on an apiserver (tests/kwok/chart/test_install.py)."""

import pytest
import yaml
from exo_operator.settings import OperatorSettings
from fixtures.helm import CHART, find, operator_container

NAMESPACED = ("watchNamespaces={team-a,team-b}",)
HA = ("replicas=2",)


@pytest.mark.parametrize(
    "values",
    [(), NAMESPACED, HA, NAMESPACED + HA, ("logFormat=json", "logLevel=debug")],
    ids=["defaults", "namespaced", "ha", "namespaced-ha", "json-debug"],
)
def test_helm_lint_is_clean(helm, values):
    sets = [arg for value in values for arg in ("--set", value)]
    result = helm.run("lint", "--strict", str(CHART), *sets)
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("replicas=-1", "replicas"),
        ("logFormat=xml", "logFormat"),
        ("watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("surprise=1", "surprise"),
        ("fetch.activeDeadlineSeconds=10", "activeDeadlineSeconds"),
        ("fetch.resources.limits.memory=lots", "memory"),
        ("runtimeShutdown.drainSeconds=0", "drainSeconds"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(helm, value, named):
    result = helm.run("template", "exo", str(CHART), "--set", value, check=False)
    assert result.returncode != 0, f"--set {value} was accepted"
    assert named in result.stderr, result.stderr


def test_defaults_watch_every_namespace_with_one_cluster_role(helm):
    manifests = helm.template()
    assert [m["metadata"]["name"] for m in find(manifests, "ClusterRole")] == ["exo-exo-operator"]
    assert not find(manifests, "Role")
    args = operator_container(manifests)["args"]
    assert args[:3] == ["run", "--all-namespaces", "--standalone"]


def test_cluster_role_is_least_privilege(helm):
    (role,) = find(helm.template(), "ClusterRole")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert not any("*" in entry for entry in granted), "no wildcards"
    # Secrets: read only, to notice a fixed token Secret (never listed or watched).
    assert {verb for _, resource, verb in granted if resource == "secrets"} == {"get"}
    assert not any(verb in ("deletecollection", "escalate", "bind") for *_, verb in granted)
    # Deleting only what the operator makes and must retire: superseded fetch Jobs, the
    # disruption budget of a model scaled to one replica, the workers of a model no longer split,
    # the head and workers of a split model's group scaled away.
    assert {(group, resource) for group, resource, verb in granted if verb == "delete"} == {
        ("batch", "jobs"),
        ("policy", "poddisruptionbudgets"),
        ("apps", "statefulsets"),
        ("apps", "deployments"),
    }
    # What kopf and the operator do need, all namespaces (kwok's RBAC tests check it for real).
    for needed in [
        ("exo.dev", "exomodels", "watch"),
        ("exo.dev", "exomodels/status", "patch"),
        ("apps", "deployments", "patch"),
        ("batch", "jobs", "create"),
        ("policy", "poddisruptionbudgets", "watch"),
        ("policy", "poddisruptionbudgets", "patch"),
        ("", "persistentvolumeclaims", "patch"),
        ("", "services", "patch"),
        ("", "pods", "watch"),
        ("", "pods/log", "get"),
        ("", "events", "create"),
        ("", "events", "list"),
        ("", "secrets", "get"),
        ("", "namespaces", "watch"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ]:
        assert needed in granted, f"{needed} is missing"


def test_namespaced_mode_has_a_role_per_namespace_and_only_reads_the_crd_cluster_wide(helm):
    manifests = helm.template(*NAMESPACED)
    roles = find(manifests, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in find(manifests, "RoleBinding")) == [
        "team-a",
        "team-b",
    ]
    (cluster_role,) = find(manifests, "ClusterRole")
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    args = operator_container(manifests)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args


def test_one_replica_runs_standalone_and_is_recreated_not_rolled(helm):
    manifests = helm.template()
    (deployment,) = find(manifests, "Deployment")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "--standalone" in operator_container(manifests)["args"]
    assert not find(manifests, "ClusterKopfPeering")


def test_several_replicas_turn_peering_on(helm):
    manifests = helm.template(*HA)
    (deployment,) = find(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "--peering=exo-operator" in operator_container(manifests)["args"]
    assert [p["metadata"]["name"] for p in find(manifests, "ClusterKopfPeering")] == [
        "exo-operator"
    ]
    (role,) = find(manifests, "ClusterRole")
    assert any("clusterkopfpeerings" in rule["resources"] for rule in role["rules"])


def test_namespaced_ha_makes_a_kopf_peering_in_each_namespace(helm):
    manifests = helm.template(*NAMESPACED, *HA)
    peerings = find(manifests, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    for role in find(manifests, "Role"):
        assert any("kopfpeerings" in rule["resources"] for rule in role["rules"])


def test_images_default_to_the_app_version_and_reach_the_operator(helm):
    container = operator_container(helm.template())
    assert container["image"] == "exo-operator/operator:0.1.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EXO_RUNTIME_IMAGE"] == "exo-operator/runtime:0.1.0"
    container = operator_container(
        helm.template(
            "runtimeImage.repository=registry.example/exo-runtime-cuda", "runtimeImage.tag=1.2"
        )
    )
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EXO_RUNTIME_IMAGE"] == "registry.example/exo-runtime-cuda:1.2"


def test_log_format_and_level_reach_the_operator(helm):
    args = operator_container(helm.template("logFormat=json", "logLevel=debug"))["args"]
    assert "--log-format=json" in args and "--verbose" in args
    args = operator_container(helm.template("logLevel=warning"))["args"]
    assert "--quiet" in args


def test_placement_values_reach_the_pod(helm):
    manifests = helm.template(
        "nodeSelector.pool=system",
        "tolerations[0].key=dedicated",
        "tolerations[0].operator=Exists",
        "resources.limits.memory=1Gi",
    )
    (deployment,) = find(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert operator_container(manifests)["resources"]["limits"]["memory"] == "1Gi"


def test_operator_pod_is_hardened(helm):
    manifests = helm.template()
    (deployment,) = find(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = operator_container(manifests)["securityContext"]
    assert security == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    probe = operator_container(manifests)["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "liveness"}


def test_metrics_are_served_on_their_own_port_behind_a_scrapable_service(helm):
    manifests = helm.template()
    container = operator_container(manifests)
    assert "--metrics-port=8081" in container["args"]
    assert "--metrics-address=0.0.0.0" in container["args"]
    assert {"name": "metrics", "containerPort": 8081} in container["ports"]
    (service,) = find(manifests, "Service", "exo-exo-operator-metrics")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}
    ]
    (deployment,) = find(manifests, "Deployment")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8081"
    # The liveness endpoint is untouched.
    assert {"name": "liveness", "containerPort": 8080} in container["ports"]


def test_metrics_port_is_a_value_and_metrics_can_be_turned_off(helm):
    manifests = helm.template("metrics.port=9100")
    assert "--metrics-port=9100" in operator_container(manifests)["args"]
    assert find(manifests, "Service")[0]["spec"]["ports"][0]["port"] == 9100
    manifests = helm.template("metrics.enabled=false")
    assert not find(manifests, "Service")
    container = operator_container(manifests)
    assert not any(arg.startswith("--metrics") for arg in container["args"])
    assert [p["name"] for p in container["ports"]] == ["liveness"]


@pytest.mark.parametrize(
    ("value", "named"),
    [("metrics.port=0", "port"), ("metrics.enabled=yes", "enabled"), ("metrics.other=1", "other")],
)
def test_bad_metrics_values_are_refused(helm, value, named):
    result = helm.run("template", "exo", str(CHART), "--set", value, check=False)
    assert result.returncode != 0, f"--set {value} was accepted"
    assert named in result.stderr, result.stderr


def _service_monitors(helm, *args: str) -> list[dict]:
    out = helm.run("template", "exo", str(CHART), *args).stdout
    return find([doc for doc in yaml.safe_load_all(out) if doc], "ServiceMonitor")


def test_service_monitor_only_when_asked_and_its_crd_exists(helm):
    crd = ("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    on = ("--set", "metrics.serviceMonitor.enabled=true")
    assert not _service_monitors(helm, *crd), "off by default"
    assert not _service_monitors(helm, *on), "a cluster without the CRD gets none"
    (monitor,) = _service_monitors(helm, *on, *crd, "--set", "metrics.serviceMonitor.labels.r=p")
    endpoint = {"port": "metrics", "path": "/metrics", "interval": "30s"}
    assert monitor["spec"]["endpoints"] == [endpoint]
    assert monitor["metadata"]["labels"]["r"] == "p"


SETTINGS_FROM_VALUES = {
    "EXO_FETCH_ACTIVE_DEADLINE_SECONDS": "fetch_active_deadline_seconds",
    "EXO_FETCH_CPU_REQUEST": "fetch_cpu_request",
    "EXO_FETCH_MEMORY_REQUEST": "fetch_memory_request",
    "EXO_FETCH_CPU_LIMIT": "fetch_cpu_limit",
    "EXO_FETCH_MEMORY_LIMIT": "fetch_memory_limit",
    "EXO_RUNTIME_PRESTOP_SECONDS": "runtime_prestop_seconds",
    "EXO_RUNTIME_DRAIN_SECONDS": "runtime_drain_seconds",
}


def operator_env(manifests):
    return {e["name"]: e.get("value") for e in operator_container(manifests)["env"]}


def test_fetch_and_shutdown_defaults_are_the_operators_own(helm):
    env = operator_env(helm.template())
    defaults = OperatorSettings.model_fields
    for name, field in SETTINGS_FROM_VALUES.items():
        assert env[name] == str(defaults[field].default), name


def test_fetch_and_shutdown_values_reach_the_operator(helm):
    env = operator_env(
        helm.template(
            "fetch.activeDeadlineSeconds=86400",
            "fetch.resources.limits.memory=2Gi",
            "runtimeShutdown.drainSeconds=300",
        )
    )
    assert env["EXO_FETCH_ACTIVE_DEADLINE_SECONDS"] == "86400"
    assert env["EXO_FETCH_MEMORY_LIMIT"] == "2Gi"
    assert env["EXO_FETCH_CPU_LIMIT"] == "1"  # the rest keep their defaults
    assert env["EXO_RUNTIME_DRAIN_SECONDS"] == "300"
    # What the operator makes of them: its settings parse the chart's strings.
    settings = OperatorSettings(
        **{field: env[name] for name, field in SETTINGS_FROM_VALUES.items()}
    )
    assert settings.fetch_active_deadline_seconds == 86400
