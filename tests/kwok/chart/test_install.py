"""The chart on a real apiserver (kwok): dry run, install, RBAC as granted, upgrade, uninstall.

kwok runs no containers: the operator pods become Ready without running the image, so this tier
tests what the apiserver, RBAC and helm do with the chart; the e2e tier runs it for real.
The tests of this module run in order against one release.
"""

import json
import uuid

import pytest
import yaml
from fixtures.helm import CHART, find

pytestmark = pytest.mark.kwok

RELEASE = "exo"
DEPLOYMENT = "exo-exo-operator"
SERVICE_ACCOUNT = "exo-exo-operator"


@pytest.fixture(scope="module")
def names():
    """Namespaces of this run: the release's, two watched ones and one not watched."""
    suffix = uuid.uuid4().hex[:6]
    return {
        "release": f"exo-chart-{suffix}",
        "team_a": f"team-a-{suffix}",
        "team_b": f"team-b-{suffix}",
        "other": f"other-{suffix}",
    }


@pytest.fixture(scope="module")
def cluster(kwok_helm, kwok_kubectl, names):
    """The kwok cluster with this run's namespaces; everything made here is removed after."""
    for key in ("team_a", "team_b", "other"):
        kwok_kubectl("create", "namespace", names[key])
    # The CRDs first, as helm would: a dry run of an ExoModel or a peering needs them served.
    for crd in sorted((CHART / "crds").glob("*.yaml")):
        kwok_kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    kwok_kubectl(
        "wait",
        "--for=condition=Established",
        "crd/exomodels.exo.dev",
        "crd/clusterkopfpeerings.kopf.dev",
        "crd/kopfpeerings.kopf.dev",
    )
    yield kwok_helm, kwok_kubectl
    kwok_helm.run("uninstall", RELEASE, "-n", names["release"], "--wait", check=False)
    for key in ("release", "team_a", "team_b", "other"):
        kwok_kubectl("delete", "namespace", names[key], "--wait=false", check=False)


def can(kubectl, namespace_of_sa, verb, resource, namespace=None):
    """kubectl auth can-i as the operator's ServiceAccount; resource may be RESOURCE/SUBRESOURCE."""
    resource, _, subresource = resource.partition("/")
    args = ["auth", "can-i", verb, resource]
    args += [f"--subresource={subresource}"] if subresource else []
    args += [f"--as=system:serviceaccount:{namespace_of_sa}:{SERVICE_ACCOUNT}"]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    result = kubectl.run(*args, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i said {answer!r}: {result.stderr}"
    return answer == "yes"


# What the operator does (kopf's watches and indexes, server-side apply of the children,
# status patches, log tails, events), and what it never needs.
NEEDED = [
    ("watch", "exomodels.exo.dev"),
    ("patch", "exomodels.exo.dev"),
    ("patch", "exomodels.exo.dev/status"),
    ("update", "exomodels.exo.dev/finalizers"),
    ("create", "deployments.apps"),
    ("patch", "deployments.apps"),
    ("delete", "deployments.apps"),
    ("watch", "statefulsets.apps"),
    ("patch", "statefulsets.apps"),
    ("delete", "statefulsets.apps"),
    ("watch", "jobs.batch"),
    ("patch", "jobs.batch"),
    ("delete", "jobs.batch"),
    ("watch", "poddisruptionbudgets.policy"),
    ("patch", "poddisruptionbudgets.policy"),
    ("delete", "poddisruptionbudgets.policy"),
    ("patch", "persistentvolumeclaims"),
    ("patch", "services"),
    ("watch", "pods"),
    ("get", "pods/log"),
    ("create", "events"),
    ("list", "events"),
    ("get", "secrets"),
]
NEVER = [
    ("list", "secrets"),
    ("watch", "secrets"),
    ("update", "exomodels.exo.dev"),
    ("update", "deployments.apps/scale"),
    ("create", "pods/exec"),
    ("delete", "persistentvolumeclaims"),
    ("delete", "exomodels.exo.dev"),
    ("create", "pods"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
]


def test_rendered_chart_passes_a_server_side_dry_run(cluster, names):
    helm, kubectl = cluster
    for values in (
        [],
        ["--set", "replicas=2"],
        ["--set", f"watchNamespaces={{{names['team_a']}}}"],
    ):
        rendered = helm.run("template", RELEASE, str(CHART), "-n", "default", *values).stdout
        result = kubectl.run(
            "apply", "--server-side", "--dry-run=server", "-f", "-", input=rendered
        )
        applied = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
        assert len(applied) == len([d for d in yaml.safe_load_all(rendered) if d]), result.stdout
        assert "Warning" not in result.stderr, result.stderr


def test_install_brings_the_operator_up_and_shows_the_first_exomodel(cluster, names):
    helm, kubectl = cluster
    installed = helm.run(
        "install", RELEASE, str(CHART), "-n", names["release"], "--create-namespace",
        "--wait", "--timeout", "120s",
    ).stdout  # fmt: skip
    notes = installed.split("NOTES:", 1)[1]
    assert "kind: ExoModel" in notes and "kubectl get exom" in notes
    assert "/v1/chat/completions" in notes
    deployment = kubectl.json("get", "deployment", DEPLOYMENT, "-n", names["release"])
    assert deployment["status"].get("readyReplicas") == 1
    crd = kubectl.json("get", "crd", "exomodels.exo.dev")
    assert any(
        c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"]
    )


@pytest.mark.parametrize(("verb", "resource"), NEEDED)
def test_operator_may_do_what_it_needs_in_every_namespace(cluster, names, verb, resource):
    _, kubectl = cluster
    assert can(kubectl, names["release"], verb, resource), f"cannot {verb} {resource}"


@pytest.mark.parametrize(("verb", "resource"), NEVER)
def test_operator_may_not_do_more(cluster, names, verb, resource):
    _, kubectl = cluster
    assert not can(kubectl, names["release"], verb, resource), f"may {verb} {resource}"


def test_upgrade_to_two_replicas_turns_peering_on(cluster, names):
    helm, kubectl = cluster
    helm.run(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        names["release"],
        "--set",
        "replicas=2",
        "--wait",
        "--timeout",
        "120s",
    )
    deployment = kubectl.json("get", "deployment", DEPLOYMENT, "-n", names["release"])
    assert deployment["status"].get("readyReplicas") == 2
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering=exo-operator" in args
    kubectl("get", "clusterkopfpeering", "exo-operator")
    assert can(kubectl, names["release"], "patch", "clusterkopfpeerings.kopf.dev")


def test_upgrade_to_namespaced_mode_grants_only_the_watched_namespaces(cluster, names):
    helm, kubectl = cluster
    watched = f"{{{names['team_a']},{names['team_b']}}}"
    helm.run(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        names["release"],
        "--set",
        f"watchNamespaces={watched}",
        "--wait",
        "--timeout",
        "120s",
    )
    for namespace in (names["team_a"], names["team_b"]):
        assert can(kubectl, names["release"], "patch", "deployments.apps", namespace)
        assert can(kubectl, names["release"], "watch", "exomodels.exo.dev", namespace)
    assert not can(kubectl, names["release"], "patch", "deployments.apps", names["other"])
    assert not can(kubectl, names["release"], "watch", "exomodels.exo.dev", names["other"])
    assert not can(kubectl, names["release"], "list", "namespaces")
    # The cluster-wide role of the default mode is gone, not left behind.
    assert kubectl.run("get", "clusterrole", DEPLOYMENT, check=False).returncode != 0


def test_uninstall_removes_the_release_but_keeps_the_crd(cluster, names):
    helm, kubectl = cluster
    helm.run("uninstall", RELEASE, "-n", names["release"], "--wait", "--timeout", "120s")
    leftovers = kubectl.json(
        "get",
        "deployments,serviceaccounts,roles,rolebindings",
        "-A",
        "-l",
        f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=exo-operator",
    )["items"]
    assert [item["metadata"]["name"] for item in leftovers] == []
    assert (
        kubectl.run("get", "clusterrole", f"{DEPLOYMENT}-crd-reader", check=False).returncode != 0
    )
    # CRDs stay (helm never deletes them): deleting one would delete every ExoModel with it.
    kubectl("get", "crd", "exomodels.exo.dev")


@pytest.mark.parametrize(
    "example", sorted(p.name for p in (CHART.parents[1] / "examples").glob("*.yaml"))
)
def test_every_example_is_a_valid_exomodel(cluster, names, example):
    _, kubectl = cluster
    path = CHART.parents[1] / "examples" / example
    document = yaml.safe_load(path.read_text())
    assert document["kind"] == "ExoModel"
    result = kubectl.run(
        "apply",
        "--server-side",
        "--dry-run=server",
        "-n",
        names["other"],
        "-o",
        "json",
        "-f",
        str(path),
    )
    applied = json.loads(result.stdout)
    # Defaults from the CRD's schema are filled in: the apiserver accepted the whole spec.
    assert applied["spec"]["engine"] == "auto"
    assert find([applied], "ExoModel")
