"""What one grammar-constrained request costs its neighbours in the continuous batch.

exo-runtime serving SmolLM2 135M Instruct (2 threads, 5 slots). Four free streaming clients
decode side by side, first alone, then with a fifth client that keeps asking for
`response_format: json_schema` answers (greedy, then sampled at temperature 0.8, which makes
the grammar reject more first draws). Reported: the neighbours' aggregate tokens/s each way and
the ratios, against the four alone and against a fifth *free* client looping the same way (the
control: any fifth sequence in the batch costs the four something, so "no more than its own
cost" means a ratio near 1.00 to the control), and the constrained client's own tokens/s
against a free client's, each alone.
Runs alternate between the cases so that a busy machine slows them alike; medians are shown.

    .venv/bin/python bench/structured_cost.py [--tokens 128] [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixtures.model import smollm2_instruct_gguf
from serving import free_port, stop, wait_until_ready

NEIGHBOURS = 4
THREADS = 2
# A list of records: long enough to keep the constrained client decoding the whole time.
SCHEMA = {
    "type": "array",
    "minItems": 30,
    "maxItems": 30,
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"type": "integer"},
            "city": {"enum": ["Paris", "Rome", "Lima", "Oslo"]},
        },
        "required": ["name", "age", "city"],
        "additionalProperties": False,
    },
}
CONSTRAINED = {"type": "json_schema", "json_schema": {"name": "people", "schema": SCHEMA}}
_request_number = iter(range(1_000_000))


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def start_runtime(model: Path) -> tuple[object, str]:
    import subprocess

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exo_runtime", "serve", "--model", str(model), "--port", str(port),
         "--threads", str(THREADS), "--parallel", str(NEIGHBOURS + 1), "--context-length", "1024",
         "--model-name", "bench"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(f"{base}/readyz", proc)
    return proc, base


@dataclass
class Stream:
    tokens: int
    seconds: float  # first token to last

    @property
    def tps(self) -> float:
        return (self.tokens - 1) / self.seconds if self.seconds > 0 else 0.0


async def stream_tokens(client: httpx.AsyncClient, base: str, body: dict) -> Stream:
    """Stream one chat completion; count its content deltas (one per token)."""
    first = last = None
    count = 0
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {await response.aread()!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and choices[0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
                count += 1
    return Stream(count, (last - first) if first else 0.0)


def end_of_turn_ids(model: Path) -> list[int]:
    """The model's end-of-turn and end-of-text tokens, which the free clients ban."""
    from llama_cpp import Llama

    vocab = Llama(str(model), vocab_only=True, verbose=False)
    ids = {vocab.token_eos()}
    for marker in (b"<|im_end|>", b"<|endoftext|>"):
        ids.update(vocab.tokenize(marker, add_bos=False, special=True)[:1])
    return sorted(ids)


def free_body(tokens: int, banned: list[int]) -> dict:
    # A counting prompt with a number of its own; the end of turn banned, so that every free
    # sequence decodes all `tokens`, as the constrained one does (SmolLM2 often stops counting
    # after a dozen numbers, which would leave the batch half empty).
    n = next(_request_number)
    return {"model": "bench", "max_tokens": tokens, "temperature": 0, "stream": True,
            "logit_bias": {str(t): -100 for t in banned},
            "messages": [{"role": "user", "content": f"Count from {n} to {n + 500}, one "
                          "number per line."}]}  # fmt: skip


def constrained_body(tokens: int, temperature: float) -> dict:
    return {"model": "bench", "max_tokens": tokens, "temperature": temperature, "seed": 1,
            "stream": True, "response_format": CONSTRAINED,
            "messages": [{"role": "user", "content": "List thirty people as JSON."}]}  # fmt: skip


FreeBody = Callable[[int], dict]  # free_body with the model's end-of-turn ids bound


async def neighbours_run(
    base: str, tokens: int, free: FreeBody, fifth: Callable[[], dict] | None
) -> float:
    """The free clients' aggregate tokens/s, with a fifth client looping on `fifth()`'s
    requests alongside unless None."""
    async with httpx.AsyncClient(timeout=600) as client:
        done = asyncio.Event()

        async def fifth_loop() -> None:
            while not done.is_set():
                await stream_tokens(client, base, fifth())

        side = asyncio.ensure_future(fifth_loop()) if fifth is not None else None
        if side is not None:
            await asyncio.sleep(0.5)  # the fifth sequence is decoding before we time
        started = time.perf_counter()
        streams = await asyncio.gather(
            *(stream_tokens(client, base, free(tokens)) for _ in range(NEIGHBOURS))
        )
        wall = time.perf_counter() - started
        done.set()
        if side is not None:
            await side
    return sum(s.tokens for s in streams) / wall


async def alone(base: str, body: dict) -> float:
    async with httpx.AsyncClient(timeout=600) as client:
        return (await stream_tokens(client, base, body)).tps


async def measure(
    base: str, free: FreeBody, tokens: int, runs: int, temperatures: list[float]
) -> None:
    async with httpx.AsyncClient(timeout=600) as client:
        await stream_tokens(client, base, free(8))  # warm the server
    # "fifth free" is the control: what any fifth sequence in the batch costs the four.
    cases: dict[str, list[float]] = {"free": [], "fifth free": []}
    cases |= {f"T={t}": [] for t in temperatures}
    for run in range(runs):
        log(f"run {run + 1}/{runs}")
        cases["free"].append(await neighbours_run(base, tokens, free, None))
        cases["fifth free"].append(await neighbours_run(base, tokens, free, lambda: free(tokens)))
        for t in temperatures:
            cases[f"T={t}"].append(
                await neighbours_run(base, tokens, free, lambda t=t: constrained_body(tokens, t))
            )
    free_alone = statistics.median([await alone(base, free(tokens)) for _ in range(runs)])
    print(f"\nSmolLM2 135M Q4_1, {THREADS} threads, {tokens} tokens per request, {runs} runs\n")
    print(f"| case | {NEIGHBOURS} neighbours' tok/s | ratio to {NEIGHBOURS} alone "
          "| ratio to a fifth free client | fifth client alone tok/s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    base_tps = statistics.median(cases["free"])
    control = statistics.median(cases["fifth free"])
    print(f"| {NEIGHBOURS} free clients only | {base_tps:.1f} | 1.00 | | |")
    print(f"| + 1 free client (the control) | {control:.1f} | {control / base_tps:.2f} | 1.00 "
          f"| {free_alone:.1f} |")  # fmt: skip
    for t in temperatures:
        with_one = statistics.median(cases[f"T={t}"])
        own = statistics.median(
            [await alone(base, constrained_body(tokens, t)) for _ in range(runs)]
        )
        print(f"| + 1 json_schema client, temperature {t} | {with_one:.1f} | "
              f"{with_one / base_tps:.2f} | {with_one / control:.2f} | {own:.1f} |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="tokens per request")
    parser.add_argument("--runs", type=int, default=3, help="runs of each case (medians shown)")
    parser.add_argument("--quick", action="store_true", help="16 tokens, 1 run, greedy only")
    args = parser.parse_args()
    tokens, runs, temperatures = args.tokens, args.runs, [0.0, 0.8]
    if args.quick:
        tokens, runs, temperatures = 16, 1, [0.0]
    model = smollm2_instruct_gguf()
    free = functools.partial(free_body, banned=end_of_turn_ids(model))
    proc, base = start_runtime(model)
    try:
        asyncio.run(measure(base, free, tokens, runs, temperatures))
    finally:
        stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
