"""Runs inside the runtime image (test_runtime_image_mlx.py): MLX imports, the selector picks MLX
for an MLX folder, and `exo-runtime serve` answers a completion with the MLX engine.

The model is a tiny Llama with random weights and a word-level tokenizer, written here, so the
check needs no download: it shows that the engine runs in the image, not that a model is good.
It prints one JSON line with what it saw; the test judges it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import exo_runtime.engines.mlx  # noqa: F401
import mlx.core as mx
import mlx_lm  # noqa: F401  (the MLX engine's own imports must work too)
from exo_runtime.selector import select_engine
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from tokenizers import Tokenizer, models, pre_tokenizers

SPECIAL = ["<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = [f"w{i}" for i in range(61)]
CONFIG = {
    "model_type": "llama",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": len(SPECIAL) + len(WORDS),
    "tie_word_embeddings": True,
    "max_position_embeddings": 128,
    "eos_token_id": 2,
}


def write_tiny_model(folder: Path) -> None:
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(CONFIG))
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (folder / "config.json").write_text(json.dumps(CONFIG))
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(SPECIAL)
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
        "eos_token": "<|im_end|>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


# Not tests/fixtures/net.py's: this file runs alone inside the runtime image.
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: dict | None = None) -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def serve_one_completion(folder: Path, log_path: Path) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        "exo-runtime", "serve", "--model", str(folder), "--port", str(port),
        "--context-length", "64", "--parallel", "1", "--warmup-max-tokens", "2",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"exo-runtime exited {server.returncode}:\n{log_path.read_text()}")
            try:
                if http(f"{base}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit(f"exo-runtime not ready in 120 s:\n{log_path.read_text()}")
        status, reply = http(
            f"{base}/v1/completions",
            {"model": "tiny-llama", "prompt": "w1 w2 w3", "max_tokens": 4, "temperature": 0},
        )
        if status != 200:
            raise SystemExit(f"/v1/completions answered {status}: {reply}")
        return reply
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def ready_event(log_path: Path) -> dict:
    for line in log_path.read_text().splitlines():
        if line.startswith('{"event": "ready"'):
            return json.loads(line)
    return {}


def main() -> None:
    # mx.compile'd code with no C++ compiler in the image: MLX must run it uncompiled.
    scaled_exp = mx.compile(lambda x: mx.exp(x) * 2.0)
    compiled = scaled_exp(mx.array([0.0, 1.0])).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny-llama"
        folder.mkdir()
        write_tiny_model(folder)
        selected = select_engine(str(folder))
        log_path = Path(tmp) / "serve.log"
        reply = serve_one_completion(folder, log_path)
        event = ready_event(log_path)
    result = {
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        "compiled": compiled,
        "selected": selected,
        "served_engine": event.get("engine"),
        "finish_reason": reply["choices"][0]["finish_reason"],
        "completion_tokens": reply["usage"]["completion_tokens"],
        "uid": os.getuid(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
