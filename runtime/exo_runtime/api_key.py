"""The runtime's API key: with `EXO_API_KEY` set, every /v1 request needs `Authorization: Bearer`
(or `x-api-key`, the header Anthropic's clients send).

Probes and /metrics stay open: the kubelet and Prometheus carry no key.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from exo_runtime.limits import API_PREFIX, send_error
from exo_runtime.openai_api import OpenAIError


class RequireApiKey:
    """ASGI middleware: a /v1 request without the right bearer key gets 401 in OpenAI's shape."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()
        self._expected_x_api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(API_PREFIX):
            headers = Headers(scope=scope)
            given = headers.get("authorization", "").encode()
            given_x_api_key = headers.get("x-api-key", "").encode()
            # Constant time, so the key cannot be guessed a byte at a time from response times.
            bearer_ok = hmac.compare_digest(given, self._expected)
            x_api_key_ok = hmac.compare_digest(given_x_api_key, self._expected_x_api_key)
            if not (bearer_ok or x_api_key_ok):
                await send_error(_unauthorized(bool(given or given_x_api_key)), send)
                return
        await self.app(scope, receive, send)


def _unauthorized(key_given: bool) -> OpenAIError:
    message = (
        "Incorrect API key provided"
        if key_given
        else "You didn't provide an API key: send it as 'Authorization: Bearer KEY' "
        "or 'x-api-key: KEY'"
    )
    return OpenAIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
