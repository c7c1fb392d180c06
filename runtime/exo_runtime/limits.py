"""Bounds on what one client can make the server hold: body bytes, prompt bytes, requests at once.

Each is a `serve` flag (and EXO_* variable); past a bound the answer is OpenAI-shaped (413 or
503), never a stall of the event loop that answers the probes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from exo_runtime.openai_api import OpenAIError

API_PREFIX = "/v1/"


@dataclass(frozen=True)
class Limits:
    # A 4096-token context is ~16 KiB of text; 4 MiB leaves room for long contexts and
    # token-id prompts while bounding what 256 clients can make the process hold (1 GiB).
    max_body_bytes: int = 4 * 1024 * 1024
    # Checked before templates and tokenizing, whose time grows with the text.
    max_prompt_bytes: int = 1024 * 1024
    # /v1 requests being read, prepared, generated or streamed at once; probes never count.
    max_concurrent_requests: int = 256


def body_too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"the request body is larger than {limit} bytes (--max-body-bytes)",
        code="request_too_large",
    )


async def read_body_within(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise body_too_large(limit)
        parts.append(part)
    return b"".join(parts)


class ConcurrencyLimit:
    """ASGI middleware: past `limit` /v1 requests at once, answer 503 with Retry-After.

    Unlike uvicorn's `limit_concurrency` it leaves /healthz, /readyz and /metrics alone (a
    saturated server is alive and its probes must say so) and answers in OpenAI's shape.
    """

    def __init__(self, app: ASGIApp, limit: int, on_refused=None) -> None:
        self.app = app
        self.limit = limit
        self.active = 0
        self._on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            if self._on_refused is not None:
                self._on_refused()
            error = OpenAIError(
                503,
                f"the server is handling {self.active} requests, its most "
                "(--max-concurrent-requests); retry later",
                type="server_error",
                code="server_overloaded",
                headers={"Retry-After": "1"},
            )
            await send_error(error, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


async def send_error(error: OpenAIError, send: Send) -> None:
    """Answer `error` straight from an ASGI middleware."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
