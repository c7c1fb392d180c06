"""Schemathesis against the runtime's own /openapi.json on the real model: no generated request
gets a 5xx, and an ordinary completion still succeeds after every one of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_process import MODEL_NAME, RuntimeProcess, launch

pytestmark = pytest.mark.runtime

# Per operation: three POST operations (completions, chat, messages) and four GETs, about
# 80 cases in all, each followed by an ordinary request (about 100 s on a busy 2-core machine).
CASES_PER_OPERATION = 25
# A short context bounds every generation, whatever max_tokens the fuzzer picks.
CONTEXT = 64
seen: dict[str, int] = {"cases": 0, "server_errors": 0}


@pytest.fixture(scope="module")
def fuzzed_runtime(gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    runtime = launch(gemma_gguf, tmp_path_factory.mktemp("fuzz"), "--context-length", str(CONTEXT))
    try:
        runtime.wait_ready()
        yield runtime
    finally:
        runtime.stop()


def _keep_generations_short(case) -> None:
    # Most generated bodies are refused; the ones accepted must not generate for long.
    if isinstance(case.body, dict):
        for field in ("max_tokens", "max_completion_tokens"):
            if isinstance(case.body.get(field), int) and case.body[field] > 4:
                case.body[field] = 4
        if "max_tokens" not in case.body and "max_completion_tokens" not in case.body:
            case.body["max_tokens"] = 4  # chat would otherwise fill the context


def _operations(base_url: str) -> list:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_no_generated_request_gets_a_server_error_or_hurts_the_next(
    fuzzed_runtime: RuntimeProcess,
) -> None:
    # Hypothesis drives schemathesis' strategies directly: the schema exists only once the
    # server runs, and schemathesis' pytest plugin does not follow this pytest's internals.
    base_url = fuzzed_runtime.base_url

    @settings(
        max_examples=CASES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(data=st.data())
    def one_case(operation, data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy())
        _keep_generations_short(case)
        response = case.call(base_url=base_url, timeout=30)
        seen["cases"] += 1
        if response.status_code >= 500:
            seen["server_errors"] += 1
        assert response.status_code < 500, (case.method, case.path, case.body, response.text)
        ordinary = httpx.post(
            f"{base_url}/v1/completions",
            json={"model": MODEL_NAME, "prompt": "1, 2,", "max_tokens": 1},
            timeout=30,
        )
        assert ordinary.status_code == 200, ordinary.text

    operations = _operations(base_url)
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/completions",
        "POST /v1/chat/completions",
    }
    for operation in operations:
        one_case(operation)


def test_after_fuzzing_the_runtime_is_alive_ready_and_has_no_internal_errors(
    fuzzed_runtime: RuntimeProcess,
) -> None:
    print(f"fuzzed {seen['cases']} cases, {seen['server_errors']} answered >= 500")
    assert seen["cases"] > 0
    for probe in ("/healthz", "/readyz"):
        assert httpx.get(fuzzed_runtime.base_url + probe, timeout=5).status_code == 200
    assert fuzzed_runtime.metric("exo_runtime_internal_errors_total") == 0
    assert "Traceback" not in fuzzed_runtime.log()
