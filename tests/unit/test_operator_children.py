"""The child builders read like a spec of each manifest."""

import pytest
from _models import SHA, model
from exo_operator.children.deployment import runtime_deployment_for, serve_args
from exo_operator.children.disruption_budget import runtime_pdb_for
from exo_operator.children.fetch_job import fetch_job_for
from exo_operator.children.pvc import cache_pvc_for
from exo_operator.children.service import runtime_service_for
from exo_operator.naming import fetch_job_name
from exo_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(runtime_image="exo-runtime:dev")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
HF = {"repo": "ggml-org/gemma-3-270m-GGUF", "file": "gemma-3-270m-Q4_K_M.gguf"}
CLAIM = {"pvc": {"claimName": "shared-models", "path": "gemma/model.gguf"}}
SNAPSHOT = {"huggingFace": {"repo": "mlx-community/gemma-3-270m-4bit", "include": ["*.json"]}}
FILES = {
    "files": [
        {"url": "https://m.example/gemma/config.json", "sha256": SHA},
        {"url": "https://m.example/gemma/model.safetensors", "sha256": SHA},
    ]
}


def container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def flag(args, name):
    return args[args.index(name) + 1] if name in args else None


def env_of(c):
    return {e["name"]: e for e in c.get("env", [])}


def fetch_container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


def test_gpu_model_asks_for_gpus_and_tolerates_their_taint():
    dep = runtime_deployment_for(
        model(resources={"gpus": 2, "cpu": "4", "memory": "8Gi"}), SETTINGS
    )
    res = container(dep)["resources"]
    assert res["limits"] == {"nvidia.com/gpu": "2", "cpu": "4", "memory": "8Gi"}
    assert res["requests"] == {"cpu": "4", "memory": "8Gi"}
    tolerations = dep["spec"]["template"]["spec"]["tolerations"]
    assert GPU_TOLERATION in tolerations
    assert flag(container(dep)["args"], "--gpu-layers") == "-1"


def test_cpu_model_asks_for_no_gpu_and_no_gpu_toleration():
    dep = runtime_deployment_for(model(resources={"gpus": 0}), SETTINGS)
    assert "nvidia.com/gpu" not in container(dep)["resources"].get("limits", {})
    assert "tolerations" not in dep["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    ("gpus", "gpu_layers", "offloaded", "visible_devices"),
    [
        (0, None, "0", "void"),  # the CUDA image's "all" would expose the node's GPUs
        (0, 12, "12", "void"),  # the user's value is passed on; still no GPU to use
        (1, None, "-1", None),  # every layer; the device plugin names the GPU
        (4, None, "-1", None),
        (2, 20, "20", None),
    ],
)
def test_a_pod_sees_only_the_gpus_it_asked_for_and_offloads_accordingly(
    gpus, gpu_layers, offloaded, visible_devices
):
    engine_args = {} if gpu_layers is None else {"gpuLayers": gpu_layers}
    c = container(
        runtime_deployment_for(model(resources={"gpus": gpus}, engineArgs=engine_args), SETTINGS)
    )
    assert flag(c["args"], "--gpu-layers") == offloaded
    assert env_of(c).get("NVIDIA_VISIBLE_DEVICES", {}).get("value") == visible_devices


def test_runtime_pod_is_hardened_and_mounts_the_cache_read_only():
    dep = runtime_deployment_for(model(), SETTINGS)
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "privileged": False,
    }
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
    assert claim == {"claimName": "gemma-cache", "readOnly": True}


def test_probes_hit_readyz_and_healthz_and_the_startup_budget_grows_with_the_model():
    small = container(runtime_deployment_for(model(), SETTINGS, model_bytes=300 * 2**20))
    big = container(runtime_deployment_for(model(), SETTINGS, model_bytes=40 * 2**30))
    assert small["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert small["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert small["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    budget = lambda c: c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]  # noqa: E731
    assert budget(small) >= 900  # the warmup timeout's default
    assert budget(big) >= budget(small) + 39 * 60


def test_serve_args_follow_the_spec_and_threads_follow_the_cpu_limit():
    m = model(
        source={"url": "https://m.example/a/b.gguf", "sha256": SHA},
        resources={"gpus": 2, "cpu": "3500m"},
        engineArgs={"contextLength": 4096, "tensorSplit": [3, 1], "parallel": 4},
        chatTemplate="{{ messages }}",
        warmup={"prompt": "Hi", "maxTokens": 4},
    )
    args = serve_args(m, SETTINGS)
    assert args[0] == "serve"
    assert flag(args, "--model").startswith("/models/") and flag(args, "--model").endswith(
        "/b.gguf"
    )
    assert flag(args, "--engine") == "auto"
    assert flag(args, "--port") == "8000"
    # Probes and the Service reach the pod's IP, not its loopback.
    assert flag(args, "--host") == "0.0.0.0"
    assert flag(args, "--model-name") == "gemma"
    assert flag(args, "--context-length") == "4096"
    assert flag(args, "--tensor-split") == "3,1"
    assert flag(args, "--threads") == "3"
    assert flag(args, "--parallel") == "4"
    assert flag(args, "--chat-template") == "{{ messages }}"
    assert flag(args, "--warmup-prompt") == "Hi"
    assert flag(args, "--warmup-max-tokens") == "4"


@pytest.mark.parametrize(
    ("source", "verified"),
    [
        ({"url": "https://m.example/a.gguf"}, True),
        ({"huggingFace": HF}, True),
        (SNAPSHOT, True),
        (FILES, True),
        (CLAIM, False),  # the user's file: no fetch wrote a record for it
    ],
)
def test_a_downloaded_model_is_served_only_once_verified(source, verified):
    args = serve_args(model(source=source), SETTINGS)
    assert ("--require-verified" in args) is verified


def test_rollout_pauses_for_endpoints_then_drains_within_the_grace_period():
    dep = runtime_deployment_for(model(), SETTINGS)
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    # The runtime image has no shell: the kubelet sleeps, not a command in the container.
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 10}}}
    assert flag(c["args"], "--shutdown-timeout") == "60"
    assert pod["terminationGracePeriodSeconds"] > 10 + 60


def test_drain_settings_reach_the_pod_and_the_grace_period_follows():
    settings = OperatorSettings(runtime_prestop_seconds=0, runtime_drain_seconds=300)
    dep = runtime_deployment_for(model(), settings)
    c = container(dep)
    assert "lifecycle" not in c
    assert flag(c["args"], "--shutdown-timeout") == "300"
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 300


@pytest.mark.parametrize(
    ("spec", "rolling"),
    [
        # Another pod can mount the model anywhere: start the new pod before stopping an old one.
        ({"storage": {"accessMode": "ReadWriteMany"}}, {"maxSurge": 1, "maxUnavailable": 0}),
        (
            {"storage": {"accessMode": "ReadWriteMany"}, "resources": {"gpus": 1}},
            {"maxSurge": 1, "maxUnavailable": 0},
        ),
        ({"source": CLAIM}, {"maxSurge": 1, "maxUnavailable": 0}),
        # One node (or pod) holds the cache: a surge pod elsewhere would wait for it forever.
        ({}, {"maxSurge": 0, "maxUnavailable": 1}),
        ({"storage": {"accessMode": "ReadWriteOncePod"}}, {"maxSurge": 0, "maxUnavailable": 1}),
    ],
    ids=["rwx", "rwx-gpu", "existing-claim", "rwo-default", "rwop"],
)
def test_rollout_never_drops_below_ready_replicas_where_the_cache_allows_a_second_pod(
    spec, rolling
):
    dep = runtime_deployment_for(model(**spec), SETTINGS)
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": rolling}


def test_api_key_comes_from_the_secret_and_never_sits_in_the_manifest():
    c = container(runtime_deployment_for(model(apiKeySecretRef={"name": "gemma-key"}), SETTINGS))
    assert env_of(c)["EXO_API_KEY"] == {
        "name": "EXO_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "gemma-key", "key": "api-key"}},
    }
    explicit = container(
        runtime_deployment_for(model(apiKeySecretRef={"name": "k", "key": "token"}), SETTINGS)
    )
    assert env_of(explicit)["EXO_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "k",
        "key": "token",
    }
    # The probes stay open paths: the runtime never asks them for the key.
    plain = container(runtime_deployment_for(model(), SETTINGS))
    assert "EXO_API_KEY" not in env_of(plain)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe] == plain[probe]


def test_spec_changes_that_the_pods_run_with_change_the_template_hash():
    def template_hash(**spec):
        dep = runtime_deployment_for(model(**spec), SETTINGS)
        return dep["spec"]["template"]["metadata"]["labels"]["exo.dev/template-hash"]

    base = template_hash()
    assert template_hash() == base
    assert template_hash(image="exo-runtime:2") != base
    assert template_hash(engineArgs={"contextLength": 512}) != base
    assert template_hash(resources={"memory": "2Gi"}) != base
    assert template_hash(apiKeySecretRef={"name": "k"}) != base
    assert template_hash(replicas=5) == base  # scaling is not a rollout


def test_user_placement_and_annotations_reach_the_pods():
    dep = runtime_deployment_for(
        model(
            nodeSelector={"pool": "gpu"},
            tolerations=[
                {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
            ],
            affinity={"nodeAffinity": {}},
            podAnnotations={"prometheus.io/scrape": "false", "team": "ml"},
        ),
        SETTINGS,
    )
    tpl = dep["spec"]["template"]
    assert tpl["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert tpl["spec"]["tolerations"][0]["key"] == "dedicated"
    assert tpl["spec"]["affinity"] == {"nodeAffinity": {}}
    assert tpl["metadata"]["annotations"] == {
        "prometheus.io/scrape": "false",  # the user's annotation wins over the default
        "prometheus.io/port": "8000",
        "prometheus.io/path": "/metrics",
        "team": "ml",
    }


def test_runtime_pods_invite_prometheus_to_scrape_their_metrics():
    annotations = runtime_deployment_for(model(), SETTINGS)["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8000",
        "prometheus.io/path": "/metrics",
    }


def test_every_child_is_owned_by_the_model_as_its_controller():
    m = model()
    for child in (
        runtime_deployment_for(m, SETTINGS),
        runtime_service_for(m, SETTINGS),
        fetch_job_for(m, SETTINGS),
        cache_pvc_for(m),
        runtime_pdb_for(model(replicas=2, storage={"accessMode": "ReadWriteMany"})),
    ):
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == "uid-1" and ref["controller"] is True and ref["kind"] == "ExoModel"
        assert child["metadata"]["labels"]["exo.dev/model"] == "gemma"


def test_retained_cache_claim_has_no_owner_so_garbage_collection_keeps_it():
    pvc = cache_pvc_for(
        model(storage={"retainOnDelete": True, "size": "20Gi", "storageClassName": "fast"})
    )
    assert "ownerReferences" not in pvc["metadata"]
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "20Gi"}},
        "storageClassName": "fast",
    }


def test_a_model_on_an_existing_claim_gets_no_cache_claim_and_no_fetch_job():
    m = model(source={"pvc": {"claimName": "shared-models", "path": "gemma/model.gguf"}})
    assert cache_pvc_for(m) is None
    assert fetch_job_for(m, SETTINGS) is None
    dep = runtime_deployment_for(m, SETTINGS)
    assert flag(container(dep)["args"], "--model") == "/models/gemma/model.gguf"
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["claimName"] == "shared-models"


def test_fetch_job_runs_exo_runtime_fetch_into_the_cache_key_dir():
    job = fetch_job_for(
        model(source={"url": "https://m.example/x.gguf", "sha256": SHA.upper()}), SETTINGS
    )
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["exo-runtime"]
    args = c["args"]
    assert args[:2] == ["fetch", "https://m.example/x.gguf"]
    assert flag(args, "--dest").startswith("/models/")
    assert flag(args, "--sha256") == SHA
    assert flag(args, "--filename") == "x.gguf"
    assert "--prune" in args  # the cache is the model's own: older files go once this one is in
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["image"] == "exo-runtime:dev"


def test_hugging_face_source_passes_its_token_from_the_secret():
    job = fetch_job_for(
        model(
            source={
                "huggingFace": {
                    "repo": "ggml-org/gemma-3-270m-GGUF",
                    "file": "gemma-3-270m-Q4_K_M.gguf",
                    "revision": "abc123",
                    "tokenSecretRef": {"name": "hf", "key": "token"},
                }
            }
        ),
        SETTINGS,
    )
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][1] == "hf://ggml-org/gemma-3-270m-GGUF/gemma-3-270m-Q4_K_M.gguf@abc123"
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}


@pytest.mark.parametrize(
    ("source", "fetched", "served"),
    [
        (
            FILES,
            ["--file", f"https://m.example/gemma/config.json={SHA}",
             "--file", f"https://m.example/gemma/model.safetensors={SHA}"],
            "",
        ),
        (
            SNAPSHOT,
            ["hf://mlx-community/gemma-3-270m-4bit@main", "--include", "*.json"],
            "",
        ),
        (
            {"files": [
                {"url": "https://m.example/q-00002-of-00002.gguf", "sha256": SHA},
                {"url": "https://m.example/q-00001-of-00002.gguf", "sha256": SHA},
            ]},
            ["--file", f"https://m.example/q-00002-of-00002.gguf={SHA}",
             "--file", f"https://m.example/q-00001-of-00002.gguf={SHA}"],
            "/q-00001-of-00002.gguf",
        ),
    ],
    ids=["files-mlx-folder", "hub-snapshot", "files-split-gguf"],
)  # fmt: skip
def test_a_model_of_several_files_is_fetched_into_one_folder_and_served_from_it(
    source, fetched, served
):
    m = model(source=source)
    args = fetch_container(fetch_job_for(m, SETTINGS))["args"]
    dest = flag(args, "--dest")
    assert args == ["fetch", *fetched, "--dest", dest, "--prune"]
    assert "--filename" not in args and "--sha256" not in args  # both name one file
    assert flag(container(runtime_deployment_for(m, SETTINGS))["args"], "--model") == dest + served


def test_hub_snapshot_passes_its_token_from_the_secret():
    hub = SNAPSHOT["huggingFace"] | {"tokenSecretRef": {"name": "hf"}}
    c = fetch_container(fetch_job_for(model(source={"huggingFace": hub}), SETTINGS))
    assert env_of(c)["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}


def test_service_exposes_the_openai_port_named_http():
    svc = runtime_service_for(model(), SETTINGS)
    assert svc["metadata"]["name"] == "gemma"
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == {"exo.dev/model": "gemma", "exo.dev/component": "runtime"}
    assert (
        svc["spec"]["ports"][0]["port"] == 8000 and svc["spec"]["ports"][0]["targetPort"] == "http"
    )


def test_fetch_job_is_bounded_in_time_and_resources():
    job = fetch_job_for(model(), SETTINGS)
    assert job["spec"]["activeDeadlineSeconds"] == 6 * 3600
    assert fetch_container(job)["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    assert env_of(fetch_container(job))["NVIDIA_VISIBLE_DEVICES"]["value"] == "void"
    longer = fetch_job_for(model(fetch={"activeDeadlineSeconds": 86400}), SETTINGS)
    assert longer["spec"]["activeDeadlineSeconds"] == 86400
    tuned = OperatorSettings(
        fetch_active_deadline_seconds=600, fetch_cpu_limit="2", fetch_memory_limit="2Gi"
    )
    job = fetch_job_for(model(), tuned)
    assert job["spec"]["activeDeadlineSeconds"] == 600
    assert fetch_container(job)["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}


def test_fetch_pod_goes_where_the_runtime_goes_gpu_taint_included():
    m = model(
        resources={"gpus": 1},
        nodeSelector={"pool": "gpu"},
        tolerations=[{"key": "dedicated", "operator": "Exists"}],
        affinity={"nodeAffinity": {"x": 1}},
    )
    fetch_pod = fetch_job_for(m, SETTINGS)["spec"]["template"]["spec"]
    runtime_pod = runtime_deployment_for(m, SETTINGS)["spec"]["template"]["spec"]
    for field in ("nodeSelector", "tolerations", "affinity"):
        assert fetch_pod[field] == runtime_pod[field], field
    assert GPU_TOLERATION in fetch_pod["tolerations"]
    # ... but the fetch never holds a GPU.
    assert (
        "nvidia.com/gpu" not in fetch_container(fetch_job_for(m, SETTINGS))["resources"]["limits"]
    )


URL = "https://models.example/gemma-3-270m.Q4_K_M.gguf"  # _models' default source
TOKEN = {"huggingFace": HF | {"tokenSecretRef": {"name": "hf"}}}


@pytest.mark.parametrize(
    ("change", "new_try"),
    [
        ({"source": {"url": "https://models.example/other.gguf"}}, True),
        ({"source": {"url": URL, "sha256": SHA}}, True),
        ({"storage": {"size": "20Gi"}}, True),  # a full disk
        ({"fetch": {"activeDeadlineSeconds": 86400}}, True),  # a deadline too short
        ({"replicas": 3}, False),
        ({"image": "registry.example/exo:2"}, False),
        ({"resources": {"gpus": 1, "memory": "8Gi"}}, False),
        ({"engineArgs": {"contextLength": 512}}, False),
        ({"storage": {"retainOnDelete": True}}, False),
    ],
)
def test_fetch_job_name_changes_only_when_a_new_try_could_succeed(change, new_try):
    assert (fetch_job_name(model(**change)) != fetch_job_name(model())) is new_try


def test_a_token_secret_change_starts_a_new_fetch_try():
    hf = fetch_job_name(model(source={"huggingFace": HF}))
    with_token = fetch_job_name(model(source=TOKEN))
    other_key = fetch_job_name(
        model(source={"huggingFace": HF | {"tokenSecretRef": {"name": "hf", "key": "t2"}}})
    )
    assert len({hf, with_token, other_key}) == 3


def test_fetch_job_name_is_stable_across_restarts_and_fits_a_label():
    name = fetch_job_name(model())
    assert name == fetch_job_name(model()) == fetch_job_for(model(), SETTINGS)["metadata"]["name"]
    assert name.startswith("gemma-fetch-")
    long = model()
    long = long.model_copy(update={"name": "m" * 40})
    assert len(fetch_job_name(long)) <= 63  # the job-name label on its pods


@pytest.mark.parametrize("replicas", [0, 1])
def test_no_disruption_budget_without_a_replica_to_spare(replicas):
    assert runtime_pdb_for(model(replicas=replicas)) is None


def test_disruption_budget_lets_drains_evict_one_runtime_pod_at_a_time():
    pdb = runtime_pdb_for(model(replicas=3, storage={"accessMode": "ReadWriteMany"}))
    assert pdb["apiVersion"] == "policy/v1" and pdb["kind"] == "PodDisruptionBudget"
    assert pdb["metadata"]["name"] == "gemma" and pdb["metadata"]["namespace"] == "ml"
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"exo.dev/model": "gemma", "exo.dev/component": "runtime"}},
        # A pod still loading serves nobody: a drain may always evict it.
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }


@pytest.mark.parametrize("image", [None, "registry.example/exo:1"])
def test_spec_image_overrides_the_default(image):
    dep = runtime_deployment_for(model(**({"image": image} if image else {})), SETTINGS)
    assert container(dep)["image"] == (image or "exo-runtime:dev")
