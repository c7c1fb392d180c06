"""The child builders read like a spec of each manifest."""

import pytest
from _models import SHA, model
from exo_operator.children.deployment import runtime_deployment_for, serve_args
from exo_operator.children.fetch_job import fetch_job_for
from exo_operator.children.pvc import cache_pvc_for
from exo_operator.children.service import runtime_service_for
from exo_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(runtime_image="exo-runtime:dev")


def container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def flag(args, name):
    return args[args.index(name) + 1] if name in args else None


def test_gpu_model_asks_for_gpus_and_tolerates_their_taint():
    dep = runtime_deployment_for(
        model(resources={"gpus": 2, "cpu": "4", "memory": "8Gi"}), SETTINGS
    )
    res = container(dep)["resources"]
    assert res["limits"] == {"nvidia.com/gpu": "2", "cpu": "4", "memory": "8Gi"}
    assert res["requests"] == {"cpu": "4", "memory": "8Gi"}
    tolerations = dep["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    # A surge pod would wait for GPUs that the old pod holds.
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert flag(container(dep)["args"], "--gpu-layers") == "-1"


def test_cpu_model_asks_for_no_gpu_and_no_gpu_toleration():
    dep = runtime_deployment_for(model(resources={"gpus": 0}), SETTINGS)
    assert "nvidia.com/gpu" not in container(dep)["resources"].get("limits", {})
    assert "tolerations" not in dep["spec"]["template"]["spec"]
    assert "--gpu-layers" not in container(dep)["args"]


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


def test_spec_changes_that_the_pods_run_with_change_the_template_hash():
    def template_hash(**spec):
        dep = runtime_deployment_for(model(**spec), SETTINGS)
        return dep["spec"]["template"]["metadata"]["labels"]["exo.dev/template-hash"]

    base = template_hash()
    assert template_hash() == base
    assert template_hash(image="exo-runtime:2") != base
    assert template_hash(engineArgs={"contextLength": 512}) != base
    assert template_hash(resources={"memory": "2Gi"}) != base
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


def test_service_exposes_the_openai_port_named_http():
    svc = runtime_service_for(model(), SETTINGS)
    assert svc["metadata"]["name"] == "gemma"
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == {"exo.dev/model": "gemma", "exo.dev/component": "runtime"}
    assert (
        svc["spec"]["ports"][0]["port"] == 8000 and svc["spec"]["ports"][0]["targetPort"] == "http"
    )


@pytest.mark.parametrize("image", [None, "registry.example/exo:1"])
def test_spec_image_overrides_the_default(image):
    dep = runtime_deployment_for(model(**({"image": image} if image else {})), SETTINGS)
    assert container(dep)["image"] == (image or "exo-runtime:dev")
