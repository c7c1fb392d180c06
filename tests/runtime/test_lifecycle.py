"""The process's life: readiness after warmup, the queue bound, SIGTERM, and load failures."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from exo_operator.runtime_events import SERVE_EVENTS, parse_event
from runtime_process import MODEL_NAME, free_port

pytestmark = pytest.mark.runtime


def _readiness_states(base_url: str, proc: subprocess.Popen, timeout: float = 90) -> list[dict]:
    """Poll /readyz from the first moment it answers until it says 200; return every body."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            response = httpx.get(f"{base_url}/readyz", timeout=2)
        except httpx.TransportError:
            time.sleep(0.01)
            continue
        body = response.json()
        assert (response.status_code == 200) == (body["state"] == "ready"), body
        seen.append(body)
        if response.status_code == 200:
            break
        assert httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
        time.sleep(0.01)
    return seen


def test_readiness_is_503_until_loaded_and_warmed_up_then_200(start_runtime) -> None:
    # A long warmup keeps the server in warming_up long enough to be seen there.
    runtime = start_runtime("--warmup-max-tokens", "40", wait=False)
    states = [body["state"] for body in _readiness_states(runtime.base_url, runtime.proc)]
    assert states and states[-1] == "ready", runtime.log()
    assert "warming_up" in states, states
    before_ready = states[: states.index("warming_up")]
    assert set(before_ready) <= {"loading"}, states
    warmup_seconds = runtime.metric("exo_runtime_warmup_seconds")
    assert warmup_seconds > 0


def test_one_ready_line_gives_load_then_warmup_seconds_before_readiness(start_runtime) -> None:
    launched = time.monotonic()
    runtime = start_runtime("--warmup-max-tokens", "40")  # returns at the first /readyz 200
    until_ready = time.monotonic() - launched
    # Read at once: whoever sees the runtime ready (the kubelet's probe) finds the line logged.
    lines = runtime.log().splitlines()
    # Parsed the way the operator parses it from the pod's log.
    found = [(i, e) for i, e in enumerate(parse_event(line, SERVE_EVENTS) for line in lines) if e]
    assert len(found) == 1, runtime.log()
    ((at, event),) = found
    assert event["engine"] == "llamacpp"
    assert event["loadSeconds"] > 0 and event["warmupSeconds"] > 0, event
    assert event["loadSeconds"] + event["warmupSeconds"] < until_ready, (event, until_ready)
    assert event["loadSeconds"] == pytest.approx(
        runtime.metric("exo_runtime_load_seconds"), abs=1e-3
    )
    assert event["warmupSeconds"] == pytest.approx(
        runtime.metric("exo_runtime_warmup_seconds"), abs=1e-3
    )
    # The steps in the order they ran: the load, then the warmup, then the line.
    loaded = next(i for i, line in enumerate(lines) if "exo_runtime: loaded " in line)
    warmed_up = next(i for i, line in enumerate(lines) if "exo_runtime: warmed up in " in line)
    assert loaded < warmed_up < at, lines
    completion = httpx.post(
        f"{runtime.base_url}/v1/completions",
        json={"model": MODEL_NAME, "prompt": "a", "max_tokens": 2},
        timeout=60,
    )
    assert completion.status_code == 200, completion.text
    assert sum(1 for line in runtime.log().splitlines() if parse_event(line, SERVE_EVENTS)) == 1


def test_requests_while_not_ready_get_503(start_runtime) -> None:
    runtime = start_runtime("--warmup-max-tokens", "40", wait=False)
    while True:
        try:
            response = httpx.post(
                f"{runtime.base_url}/v1/completions",
                json={"model": MODEL_NAME, "prompt": "a", "max_tokens": 1},
                timeout=5,
            )
            break
        except httpx.TransportError:
            time.sleep(0.01)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "not_ready"
    assert response.headers["Retry-After"]


def _open_stream(base_url: str, max_tokens: int, first_event: threading.Event, result: dict):
    body = {
        "model": MODEL_NAME,
        "prompt": "1, 2, 3, 4, 5, 6,",
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as response:
        result["status"] = response.status_code
        lines = []
        for line in response.iter_lines():
            if line.startswith("data: "):
                first_event.set()
                lines.append(line)
        result["lines"] = lines


def test_past_the_queue_bound_the_answer_is_429_with_retry_after(start_runtime) -> None:
    runtime = start_runtime("--parallel", "1", "--max-queue", "1", "--context-length", "512")
    running, queued = {}, {}
    started = threading.Event()
    threads = [
        threading.Thread(target=_open_stream, args=(runtime.base_url, 60, started, running)),
    ]
    threads[0].start()
    assert started.wait(30), "the first stream never started"
    # The second takes the one waiting place; it gets no event until the first finishes.
    threads.append(
        threading.Thread(target=_open_stream, args=(runtime.base_url, 5, threading.Event(), queued))
    )
    threads[1].start()
    deadline = time.monotonic() + 10
    while runtime.metric("exo_runtime_queue_depth") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runtime.metric("exo_runtime_queue_depth") == 1

    refused = httpx.post(
        f"{runtime.base_url}/v1/completions",
        json={"model": MODEL_NAME, "prompt": "a", "max_tokens": 1},
        timeout=10,
    )
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"].isdigit()
    assert refused.json()["error"]["code"] == "queue_full"
    assert runtime.metric("exo_runtime_requests_total", 'outcome="rejected"') == 1

    for thread in threads:
        thread.join(60)
    assert running["status"] == queued["status"] == 200
    assert running["lines"][-1] == queued["lines"][-1] == "data: [DONE]"


def test_sigterm_turns_readiness_off_finishes_in_flight_requests_and_exits_0(
    start_runtime,
) -> None:
    # The bound is far above what 40 tokens take even on a busy machine.
    runtime = start_runtime("--shutdown-timeout", "120")
    started, result = threading.Event(), {}
    stream = threading.Thread(target=_open_stream, args=(runtime.base_url, 40, started, result))
    stream.start()
    assert started.wait(30)
    runtime.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    readiness = httpx.get(f"{runtime.base_url}/readyz", timeout=5)
    assert readiness.status_code == 503
    assert readiness.json()["state"] == "draining"
    late = httpx.post(
        f"{runtime.base_url}/v1/completions",
        json={"model": MODEL_NAME, "prompt": "a", "max_tokens": 1},
        timeout=5,
    )
    assert late.status_code == 503
    stream.join(120)
    assert runtime.proc.wait(timeout=30) == 0, runtime.log()
    assert result["status"] == 200
    assert result["lines"][-1] == "data: [DONE]"
    assert '"finish_reason": "length"' in result["lines"][-2]


def test_a_keep_alive_client_is_told_to_reconnect_not_cut_off_when_the_drain_ends(
    start_runtime,
) -> None:
    # A Service's client sends its next request on the same connection the moment a stream
    # ends: the drain must answer it (503, Connection: close), not exit under it.
    runtime = start_runtime("--shutdown-timeout", "120")
    body = {"model": MODEL_NAME, "prompt": "1, 2, 3,", "max_tokens": 20, "stream": True}
    with httpx.Client(base_url=runtime.base_url, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            runtime.proc.send_signal(signal.SIGTERM)
            assert "data: [DONE]" in list(lines)  # the stream in flight ends whole
        after = client.post("/v1/completions", json={**body, "stream": False})
    assert after.status_code == 503, after.text
    assert after.headers["connection"] == "close"
    assert runtime.proc.wait(timeout=30) == 0, runtime.log()


def test_a_request_still_running_at_the_drain_bound_is_cancelled_cleanly(start_runtime) -> None:
    runtime = start_runtime("--shutdown-timeout", "1")
    started, result = threading.Event(), {}
    stream = threading.Thread(target=_open_stream, args=(runtime.base_url, 2000, started, result))
    stream.start()
    assert started.wait(30)
    began = time.monotonic()
    runtime.proc.send_signal(signal.SIGTERM)
    stream.join(60)
    assert runtime.proc.wait(timeout=30) == 0, runtime.log()
    assert time.monotonic() - began < 15
    assert result["lines"][-1] == "data: [DONE]"
    assert '"finish_reason": "cancelled"' in result["lines"][-2]


def test_sigterm_while_idle_exits_0_at_once(start_runtime) -> None:
    runtime = start_runtime()
    began = time.monotonic()
    runtime.proc.send_signal(signal.SIGTERM)
    assert runtime.proc.wait(timeout=20) == 0, runtime.log()
    assert time.monotonic() - began < 10


def _serve_and_fail(model: Path | str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "exo_runtime",
            "serve",
            "--model",
            str(model),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("kind", ["missing", "not gguf", "truncated"])
def test_a_model_that_cannot_load_exits_non_zero_with_one_clear_line(
    kind: str, gemma_gguf: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model.gguf"
    if kind == "not gguf":
        model.write_text("<html>404 not found</html>")
    elif kind == "truncated":
        with gemma_gguf.open("rb") as src:
            model.write_bytes(src.read(4 << 20))  # the header and a few tensors, no more
    result = _serve_and_fail(model)
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("exo-runtime: load failed:")]
    assert len(lines) == 1, result.stderr
    assert str(model) in lines[0]
    expected = {"missing": "does not exist", "not gguf": "not a GGUF", "truncated": "truncated"}
    assert expected[kind] in lines[0], lines[0]


def test_chat_template_override_is_used_for_chat(start_runtime) -> None:
    template = "{{ bos_token }}Q: {{ messages[-1]['content'] }}\nA:"
    runtime = start_runtime("--chat-template", template, "--context-length", "256")
    chat = httpx.post(
        f"{runtime.base_url}/v1/chat/completions",
        json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "2+2?"}],
              "max_tokens": 4, "temperature": 0},
        timeout=60,
    ).json()  # fmt: skip
    plain = httpx.post(
        f"{runtime.base_url}/v1/completions",
        json={"model": MODEL_NAME, "prompt": "Q: 2+2?\nA:", "max_tokens": 4, "temperature": 0},
        timeout=60,
    ).json()
    # The override rendered exactly the plain prompt: same tokens in, same tokens out.
    assert chat["usage"] == plain["usage"]
    assert chat["choices"][0]["message"]["content"] == plain["choices"][0]["text"]
    assert "chat template: override" in runtime.log()
