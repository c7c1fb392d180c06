"""`exo-runtime serve` on the converted MLX folder: the selector picks MLX, the shim answers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fixtures.net import free_port

pytestmark = pytest.mark.mlx

TEMPLATE_MARKERS = ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>")


@pytest.fixture(scope="module")
def mlx_server(gemma_mlx_dir: Path, tmp_path_factory):
    """A real `exo-runtime serve --model <MLX folder>` on loopback, once warmed up."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("mlx-serve") / "serve.log"
    command = [
        sys.executable, "-m", "exo_runtime", "serve", "--model", str(gemma_mlx_dir),
        "--port", str(port), "--model-name", "gemma-mlx", "--context-length", "512",
        "--parallel", "2", "--warmup-max-tokens", "2",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"exo-runtime exited with {proc.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"exo-runtime not ready after 120 s:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_picks_mlx_for_the_folder_and_completes(mlx_server):
    reply = httpx.post(
        f"{mlx_server}/v1/completions",
        json={"model": "gemma-mlx", "prompt": "The capital of France is", "max_tokens": 6,
              "temperature": 0},
        timeout=60,
    ).json()  # fmt: skip
    assert reply["choices"][0]["finish_reason"] == "length", reply
    assert reply["usage"]["completion_tokens"] == 6
    assert "capital" in reply["choices"][0]["text"], reply


def test_serve_chat_uses_the_folders_template(mlx_server):
    reply = httpx.post(
        f"{mlx_server}/v1/chat/completions",
        json={"model": "gemma-mlx", "messages": [{"role": "user", "content": "Hi"}],
              "max_tokens": 6, "temperature": 0},
        timeout=60,
    ).json()  # fmt: skip
    answer = reply["choices"][0]["message"]["content"]
    assert answer.strip(), reply
    assert not any(marker in answer for marker in TEMPLATE_MARKERS), answer
    assert reply["usage"]["prompt_tokens"] > 5
