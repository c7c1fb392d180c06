"""A draining runtime sends its clients elsewhere before it exits, instead of cutting them off.

A client on a keep-alive connection sends its next request the moment the last one ends. A
server that exits right then closes the connection under that request, and the client sees it
cut with no answer: a lost request in a rollout. So while the runtime drains, every response
says `Connection: close` (the client reconnects through the Service, to a pod that serves), and
the drain waits a moment for the connections to close before the process exits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Longest wait for clients to come back for their `Connection: close` once nothing runs: one
# that keeps a connection open without sending on it is not waited for longer.
LINGER_SECONDS = 2.0


class CloseWhileDraining:
    """ASGI middleware: while `draining()`, every response closes its connection."""

    def __init__(self, app: ASGIApp, draining: Callable[[], bool]) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.draining():
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


async def until_connections_close(open_connections: Callable[[], int]) -> None:
    """Returns once no connection is open, or after LINGER_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_SECONDS
    while open_connections() and loop.time() < deadline:
        await asyncio.sleep(0.05)
