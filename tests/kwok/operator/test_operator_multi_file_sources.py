"""Models made of several files, on a real control plane (kwok): what the fetch Job is told to
download and the path the runtime is told to load, as the apiserver stored them.

kwok's Job pods succeed without running, so these pin the operator's side only; the real fetch
of a file list, and the engine that follows the format, run in the e2e tier.
"""

import json

import pytest
from fixtures.waiting import wait_for
from operator_harness import (
    apply,
    condition,
    get_json,
    kubectl,
    model_status,
    wait_phase,
)

pytestmark = pytest.mark.kwok

SHA_CONFIG = "1" * 64
SHA_WEIGHTS = "2" * 64
MLX_FILES = [
    {"url": "https://models.example/gemma-mlx/config.json", "sha256": SHA_CONFIG},
    {"url": "https://models.example/gemma-mlx/model.safetensors", "sha256": SHA_WEIGHTS},
]
SPLIT_GGUF = [
    {"url": f"https://models.example/big-{i:05d}-of-00002.gguf", "sha256": SHA_CONFIG}
    for i in (2, 1)
]


def exomodel(name, source):
    return json.dumps(
        {
            "apiVersion": "exo.dev/v1alpha1",
            "kind": "ExoModel",
            "metadata": {"name": name},
            "spec": {"source": source},
        }
    )


def args_of(kubeconfig, namespace, kind, name_or_selector):
    if kind == "job":
        (job,) = get_json(kubeconfig, "jobs", "-n", namespace, "-l", name_or_selector)["items"]
        return job["spec"]["template"]["spec"]["containers"][0]["args"]
    dep = get_json(kubeconfig, "deployment", name_or_selector, "-n", namespace)
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def flag(args, name):
    return args[args.index(name) + 1]


@pytest.mark.parametrize(
    ("name", "source", "fetched", "entry", "engine"),
    [
        (
            "mlx-files",
            {"files": MLX_FILES},
            ["--file", f"{MLX_FILES[0]['url']}={SHA_CONFIG}",
             "--file", f"{MLX_FILES[1]['url']}={SHA_WEIGHTS}"],
            "",
            "mlx",
        ),
        (
            "split-files",
            {"files": SPLIT_GGUF},
            ["--file", f"{SPLIT_GGUF[0]['url']}={SHA_CONFIG}",
             "--file", f"{SPLIT_GGUF[1]['url']}={SHA_CONFIG}"],
            "/big-00001-of-00002.gguf",
            "llamacpp",
        ),
        (
            "mlx-snapshot",
            {"huggingFace": {"repo": "mlx-community/gemma-3-270m-it-bf16", "revision": "abc123",
                             "include": ["*.safetensors", "*.json"]}},
            ["hf://mlx-community/gemma-3-270m-it-bf16@abc123",
             "--include", "*.safetensors", "--include", "*.json"],
            "",
            "mlx",
        ),
    ],
    ids=["files-mlx-folder", "files-split-gguf", "hub-snapshot"],
)  # fmt: skip
def test_a_model_of_several_files_is_fetched_into_its_cache_folder_and_served_from_it(
    kubeconfig, namespace, name, source, fetched, entry, engine
):
    apply(kubeconfig, namespace, exomodel(name, source))
    status = wait_phase(kubeconfig, namespace, name, "Ready")

    dest = f"/models/{status['cacheKey']}"
    fetch = args_of(kubeconfig, namespace, "job", f"exo.dev/model={name}")
    assert fetch == ["fetch", *fetched, "--dest", dest, "--prune"]
    serve = args_of(kubeconfig, namespace, "deployment", name)
    assert flag(serve, "--model") == dest + entry
    assert "--require-verified" in serve  # downloaded: loaded only once every file is verified
    assert status["engine"] == engine
    assert condition(status, "ModelCached")["status"] == "True"


def test_a_changed_file_list_fetches_into_a_new_folder(kubeconfig, namespace):
    apply(kubeconfig, namespace, exomodel("grows", {"files": MLX_FILES}))
    first = wait_phase(kubeconfig, namespace, "grows", "Ready")
    tokenizer = {"url": "https://models.example/gemma-mlx/tokenizer.json", "sha256": "3" * 64}
    more = [*MLX_FILES, tokenizer]
    patch = {"spec": {"source": {"files": more}}}
    kubectl(
        kubeconfig,
        "patch",
        "exom",
        "grows",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps(patch),
    )

    def refetched():
        s = model_status(kubeconfig, namespace, "grows")
        return s.get("cacheKey") not in (None, first["cacheKey"]) and s.get("phase") == "Ready"

    wait_for(refetched, "a fetch of the longer list and Ready again")
    jobs = get_json(kubeconfig, "jobs", "-n", namespace, "-l", "exo.dev/model=grows")["items"]
    assert len(jobs) == 2
