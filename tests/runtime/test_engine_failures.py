"""A failing engine step hurts only its own batch, is logged once with a count, and turns
/healthz to 503 when it keeps failing; out-of-vocabulary ids never reach llama_decode."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from exo_runtime.app import create_app
from exo_runtime.engine import EngineOptions, GenerationRequest, SamplingParams
from exo_runtime.engines import llamacpp
from exo_runtime.scheduler import Scheduler
from exo_runtime.server import Runtime, ServeConfig
from fastapi.testclient import TestClient

pytestmark = pytest.mark.runtime

MODEL_NAME = "gemma3-test"
COUNTING = "1, 2, 3, 4,"


@pytest.fixture(scope="module")
def engine(gemma_gguf: Path):
    # Room for three sequences but a 16-token batch: a long prompt leaves others out of a batch.
    options = EngineOptions(context_length=128, parallel=3, threads=2, batch_size=16)
    loaded = llamacpp.load(str(gemma_gguf), options)
    yield loaded
    loaded.close()


def greedy(engine, request_id: str, prompt: str, max_tokens: int) -> GenerationRequest:
    tokens = engine.tokenize(prompt, add_special=True)
    return GenerationRequest(request_id, tokens, SamplingParams(max_tokens, temperature=0))


def run_to_end(engine) -> tuple[dict[str, list[int]], dict[str, str]]:
    tokens: dict[str, list[int]] = {}
    finish: dict[str, str] = {}
    while engine.has_work():
        for chunk in engine.step():
            if chunk.token_id is not None:
                tokens.setdefault(chunk.request_id, []).append(chunk.token_id)
            if chunk.finish_reason:
                finish[chunk.request_id] = chunk.finish_reason
    return tokens, finish


@pytest.mark.parametrize("bad_id", [262144, 2**31 - 1, 2**31, 2**40, -1])
def test_out_of_vocabulary_ids_are_refused_at_submit(engine, bad_id: int) -> None:
    request = GenerationRequest("bad", [2, 10, bad_id], SamplingParams(4, temperature=0))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.submit(request)
    assert not engine.has_work()


def test_a_failed_decode_ends_its_batch_only_and_frees_its_cache(engine) -> None:
    engine.submit(greedy(engine, "alone", COUNTING, 8))
    alone = run_to_end(engine)[0]["alone"]
    engine.submit(greedy(engine, "decoding", "Once upon a time", 20))
    engine.step()  # "decoding" is prefilled: from now on it decodes one token per step
    long_prompt = greedy(engine, "poisoned", "word " * 40, 4)
    engine.submit(long_prompt)
    engine.submit(greedy(engine, "left-out", COUNTING, 8))
    # The one fault submit() can no longer let through, made by hand: an id past the vocabulary
    # slipped into a prompt already accepted, so llama_decode itself refuses the batch.
    long_prompt.prompt_tokens[5] = engine.vocab_size + 7
    chunks = engine.step()
    failed = {c.request_id for c in chunks if c.finish_reason == "error"}
    # The batch held "decoding"'s next token and the first 15 of the poisoned prompt's tokens;
    # "left-out" found no room in it and goes on.
    assert failed == {"decoding", "poisoned"}
    assert all("llama_decode returned" in c.error for c in chunks if c.error)
    tokens, finish = run_to_end(engine)
    assert finish == {"left-out": "length"}
    assert tokens["left-out"] == alone, "the failed batch changed another sequence"
    engine.submit(greedy(engine, "after", COUNTING, 8))
    assert run_to_end(engine)[0]["after"] == alone


class FailingStepsEngine:
    """A test double over the real engine, for the one fault validation leaves no real way to
    cause: `step()` raising (an engine bug). It runs the real step, then raises while
    `failures_left` > 0; `tokenize` raises when `tokenizer_broken` (an unexpected bug)."""

    def __init__(self, real) -> None:
        self.real = real
        self.failures_left = 0
        self.steps = 0
        self.tokenizer_broken = False

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        if self.tokenizer_broken:
            raise RuntimeError("tokenizer bug")
        return self.real.tokenize(text, add_special=add_special)

    def close(self) -> None:
        pass  # the module's real engine outlives each app that shuts this double down

    def step(self):
        self.steps += 1
        chunks = self.real.step()
        if self.failures_left > 0:
            self.failures_left -= 1
            raise RuntimeError("injected step failure")
        return chunks


class PreloadedRuntime(Runtime):
    """The runtime over an engine loaded already (no load thread, no warmup)."""

    def __init__(self, engine, max_failed_steps: int) -> None:
        super().__init__(
            ServeConfig(
                model_path="test.gguf", model_name=MODEL_NAME, max_failed_steps=max_failed_steps
            )
        )
        self.engine = engine

    def start_loading(self, loop) -> None:
        self.loop = loop
        scheduler = Scheduler(
            self.engine,
            parallel=3,
            max_queue=4,
            metrics=self.metrics,
            max_failed_steps=self.config.max_failed_steps,
        )
        scheduler.start(loop)
        self.state.engine, self.state.scheduler = self.engine, scheduler
        self.state.move_to("ready")


def metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def complete(client: TestClient):
    body = {"model": MODEL_NAME, "prompt": COUNTING, "max_tokens": 3, "temperature": 0}
    return client.post("/v1/completions", json=body)


def test_repeated_step_failures_are_logged_once_then_healthz_is_503_until_recovery(
    engine, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FailingStepsEngine(engine)
    runtime = PreloadedRuntime(flaky, max_failed_steps=3)
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        assert complete(client).status_code == 200
        steps_before = flaky.steps
        flaky.failures_left = 4
        with caplog.at_level(logging.ERROR, logger="exo_runtime"):
            for i in range(4):
                failed = complete(client)
                assert failed.status_code == 500, failed.text
                assert "injected step failure" in failed.json()["error"]["message"]
                # The failed sequence is released: the engine is idle, the loop does not spin.
                assert not engine.has_work()
                expected = 503 if i + 1 >= 3 else 200
                assert client.get("/healthz").status_code == expected, f"after {i + 1} failures"
        # One step per request: nothing retried the failure in a loop.
        assert flaky.steps - steps_before == 4
        tracebacks = [r for r in caplog.records if r.exc_info]
        assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
        counted = [r.getMessage() for r in caplog.records if "in a row" in r.getMessage()]
        assert counted[:3] == [
            "engine step failed (1 in a row): RuntimeError: injected step failure",
            "engine step failed (2 in a row): RuntimeError: injected step failure",
            "3 engine steps failed in a row: /healthz now answers 503",
        ]
        assert metric(client, "exo_runtime_engine_failing") == 1
        assert metric(client, "exo_runtime_failed_engine_steps_total") == 4
        recovered = complete(client)
        assert recovered.status_code == 200, recovered.text
        assert recovered.json()["usage"]["completion_tokens"] == 3
        assert client.get("/healthz").status_code == 200
        assert metric(client, "exo_runtime_engine_failing") == 0


def test_an_unexpected_error_is_an_openai_shaped_500_and_counted(engine) -> None:
    flaky = FailingStepsEngine(engine)
    runtime = PreloadedRuntime(flaky, max_failed_steps=3)
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        assert metric(client, "exo_runtime_internal_errors_total") == 0
        flaky.tokenizer_broken = True
        response = complete(client)
        assert response.status_code == 500
        assert response.json()["error"] == {
            "message": "internal error (RuntimeError); the server logged it",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
        assert metric(client, "exo_runtime_internal_errors_total") == 1
        flaky.tokenizer_broken = False
        assert complete(client).status_code == 200
