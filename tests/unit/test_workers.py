"""A model split across RPC workers: the workers' StatefulSet and Service, and the head's flags."""

import pytest
from _models import body, model
from exo_operator.children.deployment import runtime_deployment_for
from exo_operator.children.workers import (
    workers_service_for,
    workers_statefulset_for,
)
from exo_operator.model import ExoModel
from exo_operator.naming import RPC_PORT
from exo_operator.plan import desired_children, obsolete_children
from exo_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(runtime_image="exo-runtime:dev")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def split(workers=2, **distributed):
    return {"distributed": {"workers": workers, **distributed}}


def worker_container(sts):
    return sts["spec"]["template"]["spec"]["containers"][0]


def head_args(m):
    return runtime_deployment_for(m, SETTINGS)["spec"]["template"]["spec"]["containers"][0]["args"]


def flag(args, name):
    return args[args.index(name) + 1] if name in args else None


def test_a_model_on_one_pod_has_no_workers():
    m = model()
    assert workers_statefulset_for(m, SETTINGS) is None
    assert workers_service_for(m) is None
    assert flag(head_args(m), "--rpc-workers") is None


def test_workers_are_a_statefulset_of_rpc_servers_owned_by_the_model():
    sts = workers_statefulset_for(model(resources={"gpus": 1}, **split(3)), SETTINGS)
    assert sts["metadata"]["name"] == "gemma-workers"
    assert sts["metadata"]["namespace"] == "ml"
    (owner,) = sts["metadata"]["ownerReferences"]
    assert owner["uid"] == "uid-1" and owner["controller"] is True
    assert sts["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "exo-operator"
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert spec["serviceName"] == "gemma-workers"
    assert spec["podManagementPolicy"] == "Parallel"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"] == {
        "exo.dev/model": "gemma",
        "exo.dev/component": "worker",
    }
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    c = worker_container(sts)
    assert c["image"] == "exo-runtime:dev"
    assert c["command"] == ["exo-runtime"]
    assert c["args"][:5] == ["rpc-worker", "--host", "0.0.0.0", "--port", "50052"]
    assert c["ports"] == [
        {"name": "rpc", "containerPort": RPC_PORT, "protocol": "TCP"},
        {"name": "health", "containerPort": RPC_PORT + 1, "protocol": "TCP"},
    ]
    # Never the RPC port: its server takes one client at a time, so a probe there times out
    # while the head is connected.
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # Tensors come from the head over RPC: no model volume, no second download.
    pod = spec["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    assert "persistentVolumeClaim" not in str(pod)


def test_the_workers_service_is_headless_and_publishes_workers_before_they_are_ready():
    svc = workers_service_for(model(**split()))
    assert svc["metadata"]["name"] == "gemma-workers"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"exo.dev/model": "gemma", "exo.dev/component": "worker"}
    assert svc["spec"]["ports"][0]["port"] == RPC_PORT
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


@pytest.mark.parametrize(
    ("resources", "distributed", "limits", "visible"),
    [
        # gpusPerWorker unset: each worker asks for the head's own GPUs.
        ({"gpus": 2}, {}, {"nvidia.com/gpu": "2"}, None),
        ({"gpus": 2}, {"gpusPerWorker": 1}, {"nvidia.com/gpu": "1"}, None),
        # A CPU worker sees no GPU of its node, even in the CUDA image.
        ({"gpus": 1}, {"gpusPerWorker": 0}, {}, "void"),
        # CPU and memory: the workers' own, else the head's.
        ({"gpus": 0, "cpu": "2", "memory": "4Gi"}, {}, {"cpu": "2", "memory": "4Gi"}, "void"),
        (
            {"gpus": 1, "cpu": "8", "memory": "32Gi"},
            {"resources": {"cpu": "1500m", "memory": "8Gi"}},
            {"nvidia.com/gpu": "1", "cpu": "1500m", "memory": "8Gi"},
            None,
        ),
    ],
)
def test_worker_resources_follow_gpus_per_worker_else_the_heads(
    resources, distributed, limits, visible
):
    sts = workers_statefulset_for(model(resources=resources, **split(**distributed)), SETTINGS)
    c = worker_container(sts)
    assert c["resources"].get("limits", {}) == limits
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env.get("NVIDIA_VISIBLE_DEVICES") == visible
    tolerations = sts["spec"]["template"]["spec"].get("tolerations", [])
    assert (GPU_TOLERATION in tolerations) == ("nvidia.com/gpu" in limits)


def test_worker_threads_follow_its_cpu_limit():
    sts = workers_statefulset_for(model(**split(resources={"cpu": "2500m"})), SETTINGS)
    assert flag(worker_container(sts)["args"], "--threads") == "2"


def test_workers_get_the_models_placement_and_spread_over_nodes():
    user_anti = {"labelSelector": {"matchLabels": {"team": "a"}}, "topologyKey": "zone"}
    affinity = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"x": 1}},
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "podAffinityTerm": user_anti}
            ]
        },
    }
    toleration = {"key": "pool", "operator": "Equal", "value": "big", "effect": "NoSchedule"}
    m = model(
        resources={"gpus": 1},
        nodeSelector={"pool": "big"},
        tolerations=[toleration],
        affinity=affinity,
        **split(),
    )
    pod = workers_statefulset_for(m, SETTINGS)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "big"}
    assert pod["tolerations"] == [toleration, GPU_TOLERATION]
    assert pod["affinity"]["nodeAffinity"] == affinity["nodeAffinity"]
    spread = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread[0] == {"weight": 10, "podAffinityTerm": user_anti}
    assert spread[1]["podAffinityTerm"] == {
        "labelSelector": {"matchLabels": {"exo.dev/model": "gemma", "exo.dev/component": "worker"}},
        "topologyKey": "kubernetes.io/hostname",
    }
    # The spec's own affinity is not changed by the builder.
    own = m.spec.affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert len(own) == 1


def test_the_head_adds_every_worker_by_its_stable_name_and_the_split():
    args = head_args(model(resources={"gpus": 1}, **split(2, tensorSplit=[2, 1, 3])))
    assert flag(args, "--rpc-workers") == (
        "gemma-workers-0.gemma-workers.ml.svc:50052,gemma-workers-1.gemma-workers.ml.svc:50052"
    )
    # llama.cpp's device order: the RPC workers first, then the head's GPU.
    assert flag(args, "--tensor-split") == "1,3,2"


def test_a_head_without_gpus_has_no_share_in_the_split():
    args = head_args(model(**split(2, tensorSplit=[2, 1, 3])))
    assert flag(args, "--tensor-split") == "1,3"


@pytest.mark.parametrize(
    ("warmup_timeout", "expected"),
    [
        (900, 300),  # the default budget: five minutes for the workers
        (60, 30),  # a short budget: half of it, so the head says why before the probe acts
    ],
)
def test_the_head_gives_up_on_a_missing_worker_before_its_startup_probe_does(
    warmup_timeout, expected
):
    m = model(warmup={"timeoutSeconds": warmup_timeout}, source={"pvc": {"claimName": "c",
              "path": "m.gguf"}}, **split())  # fmt: skip
    assert flag(head_args(m), "--rpc-connect-timeout") == str(expected)
    assert flag(head_args(model()), "--rpc-connect-timeout") is None


def test_the_head_offloads_every_layer_to_the_workers_even_without_a_gpu_of_its_own():
    assert flag(head_args(model(resources={"gpus": 0}, **split())), "--gpu-layers") == "-1"
    assert flag(head_args(model(resources={"gpus": 0})), "--gpu-layers") == "0"
    pinned = model(engineArgs={"gpuLayers": 20}, **split())
    assert flag(head_args(pinned), "--gpu-layers") == "20"


def test_a_changed_worker_group_rolls_the_head():
    def template_hash(m):
        dep = runtime_deployment_for(m, SETTINGS)
        return dep["spec"]["template"]["metadata"]["labels"]["exo.dev/template-hash"]

    base = template_hash(model(**split(2)))
    assert template_hash(model(**split(2))) == base
    assert template_hash(model(**split(3))) != base
    # Only the workers' pods change: the head's own spec is the same, its template is not.
    assert template_hash(model(**split(2, gpusPerWorker=2))) != base


def test_replicas_scale_the_whole_group():
    assert workers_statefulset_for(model(replicas=0, **split(3)), SETTINGS)["spec"]["replicas"] == 0
    assert workers_statefulset_for(model(replicas=1, **split(3)), SETTINGS)["spec"]["replicas"] == 3


def test_workers_hold_no_pod_until_the_model_is_cached_then_start_before_the_head():
    m = model(**split())

    def plan(cached):
        return [(x["kind"], x["metadata"]["name"]) for x in desired_children(
            m, SETTINGS, cached=cached, model_bytes=None
        ).manifests]  # fmt: skip

    downloading = desired_children(m, SETTINGS, cached=False, model_bytes=None).manifests
    sts = next(x for x in downloading if x["kind"] == "StatefulSet")
    assert sts["spec"]["replicas"] == 0
    assert ("Deployment", "gemma") not in plan(False)
    kinds = plan(True)
    assert kinds.index(("Service", "gemma-workers")) < kinds.index(("StatefulSet", "gemma-workers"))
    assert kinds.index(("StatefulSet", "gemma-workers")) < kinds.index(("Deployment", "gemma"))
    cached = desired_children(m, SETTINGS, cached=True, model_bytes=None).manifests
    assert next(x for x in cached if x["kind"] == "StatefulSet")["spec"]["replicas"] == 2


def test_workers_no_longer_wanted_are_deleted_but_never_someone_elses():
    ours = {"ownerReferences": [{"uid": "uid-1", "controller": True}]}
    theirs = {"ownerReferences": [{"uid": "other", "controller": True}]}

    def sts(meta):
        return {
            "kind": "StatefulSet",
            "metadata": {"namespace": "ml", "name": "gemma-workers", **meta},
        }

    one_pod = model()
    plan = desired_children(one_pod, SETTINGS, cached=True, model_bytes=None)
    assert obsolete_children(one_pod, plan, [sts(ours)]) == [("StatefulSet", "ml", "gemma-workers")]
    assert obsolete_children(one_pod, plan, [sts(theirs)]) == []
    still = model(**split())
    plan = desired_children(still, SETTINGS, cached=True, model_bytes=None)
    assert obsolete_children(still, plan, [sts(ours)]) == []


RWX = {"storage": {"accessMode": "ReadWriteMany"}}


def children(m, cached=True):
    plan = desired_children(m, SETTINGS, cached=cached, model_bytes=None)
    return {(x["kind"], x["metadata"]["name"]): x for x in plan.manifests}


def test_each_replica_is_a_group_with_its_own_head_and_workers():
    got = children(model(replicas=2, **RWX, **split(2)))
    heads = {name: d for (kind, name), d in got.items() if kind == "Deployment"}
    workers = {name: s for (kind, name), s in got.items() if kind == "StatefulSet"}
    assert sorted(heads) == ["gemma", "gemma-g1"]
    assert sorted(workers) == ["gemma-g1-workers", "gemma-workers"]
    # One headless Service names every group's workers; one Service balances over every head.
    assert [n for k, n in got if k == "Service"] == ["gemma", "gemma-workers"]
    g1, sts1 = heads["gemma-g1"], workers["gemma-g1-workers"]
    assert g1["spec"]["replicas"] == 1 and sts1["spec"]["replicas"] == 2
    assert sts1["spec"]["serviceName"] == "gemma-workers"
    group_one = {"exo.dev/model": "gemma", "exo.dev/group": "1"}
    assert g1["spec"]["selector"]["matchLabels"] == group_one | {"exo.dev/component": "runtime"}
    assert sts1["spec"]["selector"]["matchLabels"] == group_one | {"exo.dev/component": "worker"}
    for child in (g1, sts1):
        template = child["spec"]["template"]["metadata"]["labels"]
        assert child["spec"]["selector"]["matchLabels"].items() <= template.items()
        assert child["metadata"]["labels"]["exo.dev/group"] == "1"
        assert child["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    # The Service's selector (every head) takes in group 1's.
    service = got[("Service", "gemma")]["spec"]["selector"]
    assert service.items() <= g1["spec"]["template"]["metadata"]["labels"].items()
    # Heads of one spec share the template hash that the status counts ready heads by.
    hashes = {d["spec"]["template"]["metadata"]["labels"]["exo.dev/template-hash"] for d in
              heads.values()}  # fmt: skip
    assert len(hashes) == 1


def test_each_head_loads_onto_its_own_groups_workers_only():
    m = model(replicas=3, **RWX, **split(2))
    lists = [
        flag(runtime_deployment_for(m, SETTINGS, group=g)["spec"]["template"]["spec"][
            "containers"][0]["args"], "--rpc-workers").split(",")
        for g in range(3)
    ]  # fmt: skip
    assert lists[0] == [f"gemma-workers-{i}.gemma-workers.ml.svc:50052" for i in range(2)]
    assert lists[2] == [f"gemma-g2-workers-{i}.gemma-workers.ml.svc:50052" for i in range(2)]
    every = [address for group in lists for address in group]
    assert len(set(every)) == 6


def test_adding_groups_leaves_group_zero_untouched():
    one = children(model(replicas=1, **RWX, **split(2)))
    two = children(model(replicas=2, **RWX, **split(2)))
    for key in [("Deployment", "gemma"), ("StatefulSet", "gemma-workers"),
                ("Service", "gemma-workers")]:  # fmt: skip
        assert two[key] == one[key], key


def test_scaled_to_zero_only_group_zero_stays_with_no_pod():
    got = children(model(replicas=0, **split(2)))
    assert got[("Deployment", "gemma")]["spec"]["replicas"] == 0
    assert got[("StatefulSet", "gemma-workers")]["spec"]["replicas"] == 0
    assert not [k for k in got if "-g" in k[1]]


def test_scaling_down_deletes_the_groups_past_replicas_and_nothing_else():
    ours = [{"uid": "uid-1", "controller": True}]

    def child(kind, name, group=None, refs=ours):
        labels = {"exo.dev/group": str(group)} if group else {}
        return {"kind": kind, "metadata": {"namespace": "ml", "name": name, "labels": labels,
                                           "ownerReferences": refs}}  # fmt: skip

    observed = [
        child("Deployment", "gemma"),
        child("StatefulSet", "gemma-workers"),
        child("Deployment", "gemma-g1", 1),
        child("StatefulSet", "gemma-g1-workers", 1),
        child("Deployment", "gemma-g2", 2),
        child("StatefulSet", "gemma-g2-workers", 2),
        # Another model's (or a user's) objects that happen to match the names: never.
        child("Deployment", "gemma-g3", 3, refs=[{"uid": "other", "controller": True}]),
        child("StatefulSet", "gemma-g3-workers", 3, refs=[]),
    ]
    m = model(replicas=2, **RWX, **split(2))
    plan = desired_children(m, SETTINGS, cached=True, model_bytes=None)
    assert obsolete_children(m, plan, observed) == [
        ("Deployment", "ml", "gemma-g2"),
        ("StatefulSet", "ml", "gemma-g2-workers"),
    ]
    # No longer split: every group's workers and heads go, but never the model's own Deployment.
    plain = model(replicas=2, **RWX)
    plan = desired_children(plain, SETTINGS, cached=True, model_bytes=None)
    assert sorted(obsolete_children(plain, plan, observed)) == [
        ("Deployment", "ml", "gemma-g1"),
        ("Deployment", "ml", "gemma-g2"),
        ("StatefulSet", "ml", "gemma-g1-workers"),
        ("StatefulSet", "ml", "gemma-g2-workers"),
        ("StatefulSet", "ml", "gemma-workers"),
    ]


def test_the_last_group_of_the_longest_name_fits_kubernetes_name_limits():
    # Admission allows names of 40 characters and, split, 100 groups (0 to 99).
    spec = body(replicas=100, **RWX, **split(2))
    spec["metadata"]["name"] = "m" * 40
    m = ExoModel.from_body(spec)
    sts = workers_statefulset_for(m, SETTINGS, group=99)
    # A StatefulSet's pods carry the label controller-revision-hash NAME-<10 characters>: a
    # label value holds 63 (kubernetes/kubernetes#64023).
    assert len(sts["metadata"]["name"]) <= 63 - 11
    head = runtime_deployment_for(m, SETTINGS, group=99)
    assert head["metadata"]["name"] == f"{'m' * 40}-g99"
    # A worker's pod name is its hostname under the headless Service: one DNS label.
    address = flag(head["spec"]["template"]["spec"]["containers"][0]["args"], "--rpc-workers")
    assert all(len(a.split(".")[0]) <= 63 for a in address.split(","))
