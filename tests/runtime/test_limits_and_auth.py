"""Bounds on bodies and concurrent requests, probes that answer under saturation, the API key."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time

import httpx
import openai
import pytest
from runtime_process import MODEL_NAME, RuntimeProcess

pytestmark = pytest.mark.runtime

MIB = 1024 * 1024


def _stream(base_url: str, max_tokens: int, started: threading.Event, result: dict) -> None:
    body = {"model": MODEL_NAME, "prompt": "1, 2, 3,", "max_tokens": max_tokens, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=120) as response:
        result["status"] = response.status_code
        for line in response.iter_lines():
            if line.startswith("data: "):
                started.set()
                result["last"] = line


def test_past_max_concurrent_requests_v1_gets_503_and_probes_still_answer(start_runtime) -> None:
    runtime = start_runtime("--max-concurrent-requests", "2", "--context-length", "256")
    results = [{}, {}]
    threads = []
    for result in results:
        started = threading.Event()
        thread = threading.Thread(target=_stream, args=(runtime.base_url, 60, started, result))
        thread.start()
        assert started.wait(30), "a stream never started"
        threads.append(thread)
    refused = httpx.post(
        f"{runtime.base_url}/v1/completions",
        json={"model": MODEL_NAME, "prompt": "a", "max_tokens": 1},
        timeout=10,
    )
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "server_overloaded"
    assert refused.headers["Retry-After"] == "1"
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(runtime.base_url + probe, timeout=5).status_code == 200, probe
    for thread in threads:
        thread.join(120)
    assert [r["status"] for r in results] == [200, 200]
    assert all(r["last"] == "data: [DONE]" for r in results)


async def _healthz_under_load(base_url: str, seconds: float) -> tuple[list[float], int, int]:
    """/healthz latencies while 20 clients post near-limit bodies and 4 stream; with the
    bodies sent and the events streamed meanwhile."""
    near_limit = json.dumps(
        {"model": MODEL_NAME, "prompt": "word " * (MIB // 5 - 100), "max_tokens": 1}
    ).encode()
    stop = asyncio.Event()
    counts = {"large": 0, "streams": 0, "events": 0}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:

        async def post_large() -> None:
            while not stop.is_set():
                counts["large"] += 1
                response = await client.post(
                    "/v1/completions",
                    content=near_limit,
                    headers={"content-type": "application/json"},
                )
                # Tokenized, then refused: far more tokens than the 512-token context.
                assert response.json()["error"]["code"] == "context_length_exceeded"

        async def stream() -> None:
            body = {"model": MODEL_NAME, "prompt": "1, 2,", "max_tokens": 64, "stream": True}
            while not stop.is_set():
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    counts["streams"] += response.status_code == 200
                    async for line in response.aiter_lines():
                        counts["events"] += line.startswith("data: ")

        async with httpx.AsyncClient(base_url=base_url, timeout=10) as probe:
            # Streams first, so that they generate while the large bodies are being prepared.
            load = [asyncio.create_task(stream()) for _ in range(4)]
            await asyncio.sleep(1)
            load += [asyncio.create_task(post_large()) for _ in range(20)]
            await asyncio.sleep(1)  # every client has started sending
            latencies = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                started = time.perf_counter()
                assert (await probe.get("/healthz")).status_code == 200
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)
            stop.set()
            for task in load:  # what is still queued need not finish: the figures are taken
                task.cancel()
            await asyncio.gather(*load, return_exceptions=True)
    return latencies, counts["large"], counts["streams"], counts["events"]


def test_healthz_answers_quickly_while_saturated_with_large_bodies_and_streams(
    start_runtime,
) -> None:
    runtime = start_runtime(
        "--max-body-bytes", str(MIB), "--max-prompt-bytes", str(MIB), "--context-length", "512",
        "--parallel", "4",
    )  # fmt: skip
    latencies, large, streams, events = asyncio.run(_healthz_under_load(runtime.base_url, 5))
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"/healthz under load: {len(latencies)} probes, p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms; "
        f"{large} near-limit bodies sent, {streams} streams open, {events} streamed events"
    )
    assert large >= 20 and streams >= 4, "the load never saturated the server"
    # The event loop only moves bytes (parsing, templates and tokenizing run on threads), so a
    # probe waits for no request; the bound leaves room for a noisy shared machine.
    assert latencies[-1] < 0.5, f"max /healthz latency {latencies[-1]:.3f}s"


def test_api_key_guards_v1_and_leaves_probes_and_metrics_open(start_runtime) -> None:
    runtime: RuntimeProcess = start_runtime("--api-key", "s3cret", "--context-length", "256")
    base = f"{runtime.base_url}/v1"
    with pytest.raises(openai.AuthenticationError) as refused:
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    assert refused.value.code == "invalid_api_key"
    anonymous = httpx.post(
        f"{base}/completions", json={"model": MODEL_NAME, "prompt": "a"}, timeout=10
    )
    assert anonymous.status_code == 401
    assert set(anonymous.json()["error"]) == {"message", "type", "param", "code"}
    client = openai.OpenAI(base_url=base, api_key="s3cret", max_retries=0)
    reply = client.completions.create(model=MODEL_NAME, prompt="1, 2,", max_tokens=2)
    assert reply.usage.completion_tokens == 2
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(runtime.base_url + open_path, timeout=5).status_code == 200
