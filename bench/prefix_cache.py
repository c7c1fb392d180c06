"""Prefix cache benchmark: time to first token turn by turn in a growing chat, exo-runtime vs
llama.cpp's llama-server (`cache_prompt` on), in one run.

SmolLM2-135M-Instruct (a real chat model), temperature 0, 2 threads, one slot each: ten turns,
each appending the previous answer and a new ~200-token user message, so the history reaches
about 2k tokens. Each server answers its own conversation (greedy answers may differ a little
between the two). Then the turn-10 prompt once more on a fresh exo-runtime whose prefix cache is
off: the cold prefill the target is measured against (turn-10 TTFT <= 0.25x of it, and <=
llama-server's turn 10). llama-server is the one bench/serving.py builds.

    .venv/bin/python bench/prefix_cache.py [--quick] [--turns 10] [--answer-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from serving import (  # bench/ is a folder of scripts, not a package
    free_port,
    llama_server_binary,
    log,
    stop,
    wait_until_ready,
)

THREADS = 2
CONTEXT = 4096
SENTENCES = (
    "The harbour town keeps a record of every ship that enters or leaves the bay.",
    "Fishermen mend their nets on the quay while the gulls wait for scraps.",
    "The old lighthouse was automated years ago, but a keeper still lives beside it.",
    "Merchants bring wool, salt and timber, and leave with dried fish and cider.",
    "A storm in the autumn closed the harbour for nine days and sank two boats.",
    "The council argues every spring about dredging the channel deeper.",
    "Children learn to row before they learn to ride a bicycle in this town.",
    "The market opens at dawn on Saturdays and closes when the fish run out.",
)


def user_message(turn: int, sentences: int) -> str:
    """A new message for `turn`: the town's sentences in a turn-dependent order, then a
    question, so no two turns share text beyond the history itself."""
    body = " ".join(SENTENCES[(turn * 3 + i) % len(SENTENCES)] for i in range(sentences))
    return f"Note {turn}: {body} Question {turn}: summarise note {turn} in one sentence."


@dataclass
class Turn:
    prompt_tokens: int
    cached_tokens: int | None
    ttft_ms: float
    answer: str


def chat_turn(base: str, messages: list[dict], max_tokens: int, extra: dict) -> Turn:
    """One streamed chat turn: time to the first content token, the answer, the usage."""
    body = {"model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, **extra}  # fmt: skip
    started = time.perf_counter()
    ttft = None
    parts: list[str] = []
    usage: dict = {}
    timings: dict = {}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    parts.append(text)
            usage = event.get("usage") or usage
            timings = event.get("timings") or timings
    if ttft is None:
        raise RuntimeError(f"{base} answered no content")
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens", timings.get("cache_n"))
    prompt = usage.get("prompt_tokens") or timings.get("prompt_n", 0) + (cached or 0)
    return Turn(prompt, cached, ttft * 1000, "".join(parts))


def conversation(base: str, turns: int, sentences: int, answer: int, extra: dict) -> list[Turn]:
    messages: list[dict] = [{"role": "system", "content": "You are a concise assistant."}]
    results = []
    for turn in range(1, turns + 1):
        messages.append({"role": "user", "content": user_message(turn, sentences)})
        result = chat_turn(base, messages, answer, extra)
        messages.append({"role": "assistant", "content": result.answer})
        results.append(result)
        log(f"  turn {turn}: {result.prompt_tokens} tokens, TTFT {result.ttft_ms:.0f} ms")
    return results


def last_prompt(turns: int, sentences: int, answers: list[Turn]) -> list[dict]:
    """The messages of the last turn of the conversation that gave `answers`."""
    messages: list[dict] = [{"role": "system", "content": "You are a concise assistant."}]
    for turn in range(1, turns + 1):
        messages.append({"role": "user", "content": user_message(turn, sentences)})
        if turn < turns:
            messages.append({"role": "assistant", "content": answers[turn - 1].answer})
    return messages


def start_exo(model: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exo_runtime", "serve", "--model", str(model), "--port", str(port),
         "--threads", str(THREADS), "--parallel", "1", "--context-length", str(CONTEXT),
         "--model-name", "bench", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(f"{base}/readyz", proc)
    return proc, base


def start_llama_server(binary: Path, model: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
         "-t", str(THREADS), "-tb", str(THREADS), "--parallel", "1", "-c", str(CONTEXT),
         "--no-webui", "-a", "bench", "--jinja"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(f"{base}/health", proc)
    return proc, base


def cold_ttft(base: str, messages: list[dict], answer: int, extra: dict, runs: int = 2) -> float:
    """The best of `runs` prefills of `messages` with nothing reused (a noisy machine only ever
    makes a run slower)."""
    return min(chat_turn(base, messages, answer, extra).ttft_ms for _ in range(runs))


def main() -> int:
    global THREADS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 short turns: a smoke run")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--sentences", type=int, default=11, help="per user message (~200 tok)")
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=THREADS, help="CPU threads per server")
    parser.add_argument(
        "--without-llama-server", action="store_true", help="ours only (no llama-server build)"
    )
    args = parser.parse_args()
    THREADS = args.threads
    if args.quick:
        args.turns, args.sentences, args.answer_tokens = 3, 2, 8
    from fixtures.model import smollm2_instruct_gguf

    model = smollm2_instruct_gguf()
    binary = None if args.without_llama_server else llama_server_binary()

    log("exo-runtime, prefix cache on")
    proc, base = start_exo(model)
    try:
        ours = conversation(base, args.turns, args.sentences, args.answer_tokens, {})
    finally:
        stop(proc)
    final = last_prompt(args.turns, args.sentences, ours)
    log("exo-runtime, prefix cache off: the last prompt cold")
    proc, base = start_exo(model, "--prefix-cache-entries", "0")
    try:
        cold = cold_ttft(base, final, args.answer_tokens, {})
    finally:
        stop(proc)
    theirs, their_cold = [Turn(0, None, float("nan"), "")] * len(ours), float("nan")
    if binary is not None:
        log("llama-server, cache_prompt on")
        proc, base = start_llama_server(binary, model)
        try:
            extra = {"cache_prompt": True}
            theirs = conversation(base, args.turns, args.sentences, args.answer_tokens, extra)
            their_final = last_prompt(args.turns, args.sentences, theirs)
            extra = {"cache_prompt": False}
            their_cold = cold_ttft(base, their_final, args.answer_tokens, extra)
        finally:
            stop(proc)

    print(f"\nSmolLM2-135M-Instruct Q4_1, {args.turns} turns, {args.answer_tokens}-token "
          f"answers, temperature 0, {THREADS} threads, one slot, streaming chat")  # fmt: skip
    print(f"llama-server: {binary or 'not run'}\n")
    print(
        "| turn | exo prompt tok | exo cached | exo TTFT ms "
        "| llama-server prompt tok | llama-server cached | llama-server TTFT ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True), start=1):
        print(f"| {i} | {a.prompt_tokens} | {a.cached_tokens} | {a.ttft_ms:.0f} "
              f"| {b.prompt_tokens} | {b.cached_tokens} | {b.ttft_ms:.0f} |")  # fmt: skip
    print(f"| {args.turns}, cold | {ours[-1].prompt_tokens} | 0 | {cold:.0f} "
          f"| {theirs[-1].prompt_tokens} | 0 | {their_cold:.0f} |")  # fmt: skip
    last, their_last = ours[-1].ttft_ms, theirs[-1].ttft_ms
    print(
        f"\nturn {args.turns} TTFT / cold prefill of the same prompt: {last / cold:.2f} "
        f"(target <= 0.25; llama-server's own: {their_last / their_cold:.2f})"
    )
    print(f"turn {args.turns} TTFT exo / llama-server: {last / their_last:.2f} (target <= 1.00)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
