"""The HTTP face: routes, error handlers and middleware over a `Runtime` (server.py).

Routes stay thin: read the body within its bound, prepare the request on a worker thread
(serving.py: parse, check, template, tokenize), then hand it to the scheduler. The event loop
only moves bytes, so /healthz answers at once however busy the server is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from exo_runtime.api_key import RequireApiKey
from exo_runtime.draining import CloseWhileDraining
from exo_runtime.limits import ConcurrencyLimit, read_body_within
from exo_runtime.messages_api import (
    MESSAGES_PATH,
    AnthropicErrors,
    MessagesBody,
    create_message,
    prepare_message,
)
from exo_runtime.openai_api import ChatCompletionBody, CompletionBody, OpenAIError
from exo_runtime.request_checks import validation_error
from exo_runtime.serving import generate, prepare_chat, prepare_completion

if TYPE_CHECKING:
    from exo_runtime.server import Runtime

log = logging.getLogger("exo_runtime")


def create_app(runtime: Runtime) -> FastAPI:
    """The FastAPI app; its lifespan starts loading the model in the background."""
    config, state, metrics = runtime.config, runtime.state, runtime.metrics
    limits = config.limits

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runtime.start_loading(asyncio.get_running_loop())
        yield
        if state.scheduler is not None:
            await asyncio.to_thread(state.scheduler.stop)

    app = FastAPI(title="exo-runtime", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(
        ConcurrencyLimit,
        limit=limits.max_concurrent_requests,
        on_refused=lambda: metrics.requests.labels("rejected").inc(),
    )
    if config.api_key:
        app.add_middleware(RequireApiKey, api_key=config.api_key)  # checked first
    app.add_middleware(AnthropicErrors)  # sees the errors of every layer within
    # Outermost, so that every answer, refusals included, carries it.
    app.add_middleware(CloseWhileDraining, draining=lambda: state.state == "draining")

    @app.exception_handler(OpenAIError)
    async def _openai_error(_request: Request, err: OpenAIError) -> JSONResponse:
        if err.status in (413, 429):
            metrics.requests.labels("rejected").inc()
        elif 400 <= err.status < 500:
            metrics.requests.labels("invalid").inc()
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_request: Request, err: RequestValidationError) -> JSONResponse:
        metrics.requests.labels("invalid").inc()
        return validation_error(err.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        return OpenAIError(
            err.status_code, str(err.detail), code=_http_code(err.status_code)
        ).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        # A bug, not the client's fault: answered in OpenAI's shape and counted, so an alert
        # can fire on it; the traceback goes to the log once.
        metrics.internal_errors.inc()
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=err)
        return OpenAIError(
            500,
            f"internal error ({type(err).__name__}); the server logged it",
            type="server_error",
            code="internal_error",
        ).response()

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        # Alive unless the engine keeps failing: then the kubelet's liveness probe restarts us.
        scheduler = state.scheduler
        if scheduler is not None and scheduler.failing:
            body = {"status": "engine failing", "failedSteps": scheduler.failed_steps}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return JSONResponse(state.readiness(), status_code=200 if state.ready else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": config.served_name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "exo-operator",
                    # What a router needs to place a request: the engine and the room per
                    # sequence (vLLM calls the latter max_model_len).
                    "engine": state.engine.name if state.engine else None,
                    "context_length": state.engine.context_length if state.engine else None,
                    # Where the weights are (the head's CPU, each RPC worker, GPUs) and which
                    # CPU kernels run; llama.cpp only (MLX has neither).
                    "devices": [d.as_dict() for d in getattr(state.engine, "devices", ())],
                    "cpu_variant": getattr(state.engine, "cpu_variant", None),
                }
            ],
        }

    @app.post("/v1/completions", openapi_extra=_json_body(CompletionBody))
    async def completions(request: Request) -> Response:
        raw = await read_body_within(request, limits.max_body_bytes)
        prepared = await asyncio.to_thread(prepare_completion, runtime, raw)
        return await generate(runtime, request, prepared)

    @app.post("/v1/chat/completions", openapi_extra=_json_body(ChatCompletionBody))
    async def chat_completions(request: Request) -> Response:
        raw = await read_body_within(request, limits.max_body_bytes)
        prepared = await asyncio.to_thread(prepare_chat, runtime, raw)
        return await generate(runtime, request, prepared)

    @app.post(MESSAGES_PATH, openapi_extra=_json_body(MessagesBody))
    async def messages(request: Request) -> Response:
        raw = await read_body_within(request, limits.max_body_bytes)
        prepared = await asyncio.to_thread(prepare_message, runtime, raw)
        return await create_message(runtime, request, prepared)

    def openapi() -> dict[str, Any]:
        # The bodies are parsed on a worker thread, not by FastAPI, so their models are added
        # to the schema here: /openapi.json still describes every field a client may send.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(_body_schemas())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


def _json_body(model: type) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _body_schemas() -> dict[str, Any]:
    _, top = models_json_schema(
        [(m, "validation") for m in (CompletionBody, ChatCompletionBody, MessagesBody)],
        ref_template="#/components/schemas/{model}",
    )
    return top["$defs"]


def _http_code(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
