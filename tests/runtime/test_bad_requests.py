"""Bad requests: each answered 4xx in OpenAI's error shape, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest
from runtime_process import MODEL_NAME, RuntimeProcess

pytestmark = pytest.mark.runtime

LONG_PROMPT = "word " * 700  # past the shared server's 512-token context

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "hello"}]

# (case, path, raw body, status, error.code or None, error.param or None)
BAD_REQUESTS = [
    ("malformed json", CHAT, b'{"model": "gemma3-test", "messages": [', 400, "invalid_json", None),
    ("body not an object", COMPLETIONS, b"[1, 2]", 400, "invalid_value", None),
    ("messages not a list", CHAT, {"model": MODEL_NAME, "messages": "hi"}, 400, None, "messages"),
    ("max_tokens a string", COMPLETIONS, {"model": MODEL_NAME, "prompt": "a", "max_tokens": "x"},
     400, None, "max_tokens"),
    ("temperature out of range", COMPLETIONS,
     {"model": MODEL_NAME, "prompt": "a", "temperature": 9}, 400, None, "temperature"),
    ("unknown role", CHAT, {"model": MODEL_NAME, "messages": [{"role": "wizard", "content": "x"}]},
     400, None, None),
    ("missing model", COMPLETIONS, {"prompt": "a"}, 400, None, "model"),
    ("unknown model", CHAT, {"model": "no-such-model", "messages": HELLO}, 404,
     "model_not_found", "model"),
    ("negative max_tokens", COMPLETIONS, {"model": MODEL_NAME, "prompt": "a", "max_tokens": -5},
     400, None, "max_tokens"),
    ("zero max_tokens", CHAT, {"model": MODEL_NAME, "messages": HELLO, "max_tokens": 0},
     400, None, "max_tokens"),
    ("huge max_tokens", COMPLETIONS,
     {"model": MODEL_NAME, "prompt": "a", "max_tokens": 10_000_000}, 400,
     "context_length_exceeded", "max_tokens"),
    ("prompt longer than the context", COMPLETIONS,
     {"model": MODEL_NAME, "prompt": LONG_PROMPT, "max_tokens": 1}, 400,
     "context_length_exceeded", "prompt"),
    ("chat longer than the context", CHAT,
     {"model": MODEL_NAME, "messages": [{"role": "user", "content": LONG_PROMPT}]}, 400,
     "context_length_exceeded", "messages"),
    ("empty message list", CHAT, {"model": MODEL_NAME, "messages": []}, 400, None, "messages"),
    ("empty prompt", COMPLETIONS, {"model": MODEL_NAME, "prompt": ""}, 400, None, "prompt"),
    ("several prompts", COMPLETIONS, {"model": MODEL_NAME, "prompt": ["a", "b"]}, 400, None,
     "prompt"),
    ("n above --parallel", COMPLETIONS, {"model": MODEL_NAME, "prompt": "a", "n": 9}, 400,
     "invalid_value", "n"),
    ("roles out of order for Gemma", CHAT,
     {"model": MODEL_NAME, "messages": [{"role": "assistant", "content": "hi"}]}, 400, None,
     "messages"),
    ("too many stop strings", COMPLETIONS,
     {"model": MODEL_NAME, "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, None, "stop"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_request_gets_an_openai_error_and_the_server_keeps_serving(
    shared_runtime: RuntimeProcess,
    path: str,
    body: bytes | dict,
    status: int,
    code: str | None,
    param: str | None,
) -> None:
    url = shared_runtime.base_url + path
    if isinstance(body, bytes):
        response = httpx.post(
            url, content=body, headers={"content-type": "application/json"}, timeout=30
        )
    else:
        response = httpx.post(url, json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    still = httpx.post(
        shared_runtime.base_url + COMPLETIONS,
        json={"model": MODEL_NAME, "prompt": "a", "max_tokens": 1},
        timeout=30,
    )
    assert still.status_code == 200, still.text


def test_unknown_route_answers_404_in_openai_shape(shared_runtime: RuntimeProcess) -> None:
    response = httpx.get(shared_runtime.base_url + "/v1/nothing", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
