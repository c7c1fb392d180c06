"""The OpenAI-compatible HTTP shim: FastAPI routes over the scheduler, and the process's life.

The server listens before the model loads, so /healthz and /readyz answer during a long load
(the Kubernetes startup probe relies on it); /readyz turns 200 only after warmup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from exo_runtime.chat_template import ChatTemplateError, choose_chat_template, message_text
from exo_runtime.engine import Chunk, Engine, EngineOptions, GenerationRequest, SamplingParams
from exo_runtime.metrics import RuntimeMetrics
from exo_runtime.openai_api import ChatCompletionBody, CompletionBody, OpenAIError
from exo_runtime.runtime_state import RuntimeState
from exo_runtime.scheduler import QueueFullError, Scheduler

log = logging.getLogger("exo_runtime")

TERMINATION_LOG = "/dev/termination-log"
# OpenAI's legacy completions default; chat defaults to the room left in the context.
DEFAULT_COMPLETION_MAX_TOKENS = 16


@dataclass(frozen=True)
class ServeConfig:
    """Everything `exo-runtime serve` was asked for."""

    model_path: str
    engine: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None
    options: EngineOptions = field(default_factory=EngineOptions)
    chat_template: str | None = None
    warmup_prompt: str = "Hello"
    warmup_max_tokens: int = 8
    max_queue: int = 64
    shutdown_timeout: float = 30.0
    require_verified: bool = False  # load only a file `exo-runtime fetch` verified

    @property
    def served_name(self) -> str:
        return self.model_name or Path(self.model_path).name.removesuffix(".gguf")


# -- loading -------------------------------------------------------------------------------


def load_and_warm_up(config: ServeConfig, runtime: RuntimeState, metrics: RuntimeMetrics) -> None:
    """Load the engine, pick the chat template and warm up; raise on any failure."""
    from exo_runtime.selector import load_engine

    def on_progress(done: int, total: int) -> None:
        runtime.load_progress = done / total if total else 0.0

    started = time.perf_counter()
    engine = load_engine(
        config.model_path,
        config.engine,
        config.options,
        on_progress,
        require_verified=config.require_verified,
    )
    runtime.engine = engine
    runtime.load_seconds = time.perf_counter() - started
    metrics.load_seconds.set(runtime.load_seconds)
    log.info("loaded %s with %s in %.2fs", config.model_path, engine.name, runtime.load_seconds)
    runtime.chat_template = choose_chat_template(
        override=config.chat_template,
        embedded=engine.embedded_chat_template(),
        architecture=engine.architecture(),
        special_tokens=engine.special_tokens(),
    )
    if runtime.chat_template is None:
        log.warning(
            "no chat template: the model carries none and architecture %r has no built-in one; "
            "/v1/chat/completions will refuse requests (give --chat-template)",
            engine.architecture(),
        )
    else:
        log.info("chat template: %s", runtime.chat_template.source)
    if not runtime.move_to("warming_up"):
        return
    started = time.perf_counter()
    engine.warmup(engine.tokenize(config.warmup_prompt, add_special=True), config.warmup_max_tokens)
    runtime.warmup_seconds = time.perf_counter() - started
    metrics.warmup_seconds.set(runtime.warmup_seconds)
    log.info("warmed up in %.2fs", runtime.warmup_seconds)


def report_ready(runtime: RuntimeState) -> None:
    """One JSON line on stdout with the step times, in the shape of `exo-runtime fetch`'s lines.

    The operator reads it from the pod's log once the pod is Ready (exo_operator.runtime_events).
    """
    event = {
        "event": "ready",
        "loadSeconds": round(runtime.load_seconds, 3),
        "warmupSeconds": round(runtime.warmup_seconds, 3),
        "engine": runtime.engine.name,
    }
    print(json.dumps(event), flush=True)


def report_load_failure(reason: str) -> None:
    """One line on stderr, and the pod's termination message, for the operator to read."""
    line = f"exo-runtime: load failed: {reason}"
    print(line, file=sys.stderr, flush=True)
    try:
        with open(TERMINATION_LOG, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError:
        pass  # not in a pod, or not writable: stderr already has it


# -- the app -------------------------------------------------------------------------------


class Runtime:
    """The process's pieces: config, state, metrics, and how to stop the HTTP server."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.state = RuntimeState()
        self.metrics = RuntimeMetrics()
        self.exit_code = 0
        self.request_exit: Callable[[], None] = lambda: None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start_loading(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        threading.Thread(target=self._load, name="exo-loader", daemon=True).start()

    def _load(self) -> None:
        try:
            load_and_warm_up(self.config, self.state, self.metrics)
        except Exception as err:
            reason = str(err) or type(err).__name__
            self.state.error = reason
            self.state.move_to("failed")
            report_load_failure(reason)
            self.exit_code = 1
            self.loop.call_soon_threadsafe(self.request_exit)
            return
        engine = self.state.engine
        scheduler = Scheduler(
            engine,
            parallel=self.config.options.parallel,
            max_queue=self.config.max_queue,
            metrics=self.metrics,
        )
        scheduler.start(self.loop)
        self.state.scheduler = scheduler
        if self.state.warmup_seconds is not None:
            # Before /readyz turns 200: whoever sees the pod Ready finds the line in its log.
            report_ready(self.state)
        if self.state.move_to("ready"):
            log.info(
                "ready: serving %s on %s:%d",
                self.config.served_name,
                self.config.host,
                self.config.port,
            )

    async def drain(self) -> None:
        """Stop taking requests (/readyz 503), let in-flight ones finish within the bound, exit."""
        was_ready = self.state.ready
        self.state.move_to("draining")
        scheduler = self.state.scheduler
        if was_ready and scheduler is not None and scheduler.in_flight:
            log.info("draining %d in-flight requests", scheduler.in_flight)
            try:
                await asyncio.wait_for(scheduler.idle.wait(), self.config.shutdown_timeout)
            except TimeoutError:
                log.warning(
                    "%d requests still running after %.0fs: cancelling them",
                    scheduler.in_flight,
                    self.config.shutdown_timeout,
                )
                # Cancelled, their clients get a last event instead of a cut connection.
                scheduler.cancel_all()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(scheduler.idle.wait(), 2)
        self.request_exit()


def create_app(runtime: Runtime) -> FastAPI:
    """The FastAPI app; its lifespan starts loading the model in the background."""
    config, state, metrics = runtime.config, runtime.state, runtime.metrics

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runtime.start_loading(asyncio.get_running_loop())
        yield
        if state.scheduler is not None:
            await asyncio.to_thread(state.scheduler.stop)

    app = FastAPI(title="exo-runtime", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(OpenAIError)
    async def _openai_error(_request: Request, err: OpenAIError) -> JSONResponse:
        if err.status == 429:
            metrics.requests.labels("rejected").inc()
        elif 400 <= err.status < 500:
            metrics.requests.labels("invalid").inc()
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_request: Request, err: RequestValidationError) -> JSONResponse:
        metrics.requests.labels("invalid").inc()
        return _validation_error(err).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        return OpenAIError(
            err.status_code, str(err.detail), code=_http_code(err.status_code)
        ).response()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

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
                }
            ],
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request) -> Response:
        engine = _ready_engine(runtime, body.model)
        prompt_tokens = _completion_prompt_tokens(engine, body.prompt)
        max_tokens = body.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS
        return await _generate(runtime, request, body, prompt_tokens, max_tokens, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionBody, request: Request) -> Response:
        engine = _ready_engine(runtime, body.model)
        if not body.messages:
            raise OpenAIError(400, "messages must hold at least one message", param="messages")
        template = state.chat_template
        if template is None:
            raise OpenAIError(
                400,
                f"model {config.served_name} has no chat template (none in the model, none "
                "built in for its architecture): start the runtime with --chat-template, or "
                "use /v1/completions",
                param="messages",
                code="no_chat_template",
            )
        messages = [{"role": m.role, "content": message_text(m.content)} for m in body.messages]
        try:
            prompt = template.render(messages, add_generation_prompt=True)
        except ChatTemplateError as err:
            raise OpenAIError(400, str(err), param="messages") from err
        # Tokenizing reads the vocabulary only, never the context the scheduler thread drives.
        prompt_tokens = engine.tokenize(prompt, add_special=False)
        max_tokens = body.max_tokens or max(1, engine.context_length - len(prompt_tokens))
        return await _generate(runtime, request, body, prompt_tokens, max_tokens, chat=True)

    return app


def _http_code(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")


def _validation_error(err: RequestValidationError) -> OpenAIError:
    first = err.errors()[0] if err.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return OpenAIError(400, "the request body is not valid JSON", code="invalid_json")
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    return OpenAIError(
        400, f"{param}: {message}" if param else message, param=param, code="invalid_value"
    )


def _ready_engine(runtime: Runtime, model: str) -> Engine:
    state = runtime.state
    if model != runtime.config.served_name:
        raise OpenAIError(
            404,
            f"the model {model!r} does not exist: this server serves "
            f"{runtime.config.served_name!r}",
            param="model",
            code="model_not_found",
        )
    if not state.ready:
        raise OpenAIError(
            503,
            f"the model is not ready (state: {state.state}); retry once /readyz answers 200",
            type="server_error",
            code="not_ready",
            headers={"Retry-After": "1"},
        )
    return state.engine


def _completion_prompt_tokens(engine: Engine, prompt: str | list[str] | list[int]) -> list[int]:
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return list(prompt)
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise OpenAIError(
                400,
                "give exactly one prompt (batches of prompts are not supported)",
                param="prompt",
            )
        prompt = prompt[0]
    if not prompt:
        raise OpenAIError(400, "prompt is empty", param="prompt")
    return engine.tokenize(prompt, add_special=True)


async def _generate(
    runtime: Runtime,
    request: Request,
    body: CompletionBody | ChatCompletionBody,
    prompt_tokens: list[int],
    max_tokens: int,
    *,
    chat: bool,
) -> Response:
    engine, scheduler = runtime.state.engine, runtime.state.scheduler
    if body.n != 1:
        raise OpenAIError(400, "only n=1 is supported", param="n")
    context = engine.context_length
    if len(prompt_tokens) >= context:
        raise OpenAIError(
            400,
            f"the prompt is {len(prompt_tokens)} tokens, but the context holds {context}: "
            "shorten it",
            param="messages" if chat else "prompt",
            code="context_length_exceeded",
        )
    if len(prompt_tokens) + max_tokens > context:
        raise OpenAIError(
            400,
            f"the context holds {context} tokens, but the prompt ({len(prompt_tokens)}) plus "
            f"max_tokens ({max_tokens}) needs {len(prompt_tokens) + max_tokens}: lower max_tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop_strings(),
        stop_token_ids=tuple(body.stop_token_ids or ()),
    )
    try:
        chunks = scheduler.submit(GenerationRequest(request_id, prompt_tokens, params))
    except QueueFullError as err:
        raise OpenAIError(
            429,
            f"the server is busy: {err}; retry later",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(err.retry_after)},
        ) from err
    reply = _Reply(request_id, body.model, chat, len(prompt_tokens))
    disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
    if body.stream:
        events = _stream_events(reply, chunks, disconnected, scheduler, body.include_usage)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    received = _chunks_until_disconnect(chunks, disconnected, scheduler, request_id)
    try:
        async for chunk in received:
            reply.add(chunk)
    finally:
        # Closing the generator now (not at garbage collection) cancels an unfinished sequence.
        await received.aclose()
        disconnected.cancel()
    if reply.error:
        raise OpenAIError(500, f"generation failed: {reply.error}", type="server_error")
    return JSONResponse(reply.whole())


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _chunks_until_disconnect(
    chunks: asyncio.Queue[Chunk],
    disconnected: asyncio.Future,
    scheduler: Scheduler,
    request_id: str,
) -> AsyncIterator[Chunk]:
    """The request's chunks up to its last; a client gone mid-way cancels its sequence at once."""
    finished = False
    try:
        while True:
            if chunks.empty():
                getter = asyncio.ensure_future(chunks.get())
                await asyncio.wait((getter, disconnected), return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    return
                chunk = getter.result()
            else:
                chunk = chunks.get_nowait()
            finished = chunk.finish_reason is not None
            yield chunk
            if finished:
                return
    finally:
        if not finished:
            scheduler.cancel(request_id)


async def _stream_events(
    reply: _Reply,
    chunks: asyncio.Queue[Chunk],
    disconnected: asyncio.Future,
    scheduler: Scheduler,
    include_usage: bool,
) -> AsyncIterator[str]:
    received = _chunks_until_disconnect(chunks, disconnected, scheduler, reply.id)
    try:
        if reply.chat:
            yield _sse(reply.event({"role": "assistant", "content": ""}, None))
        async for chunk in received:
            reply.add(chunk)
            if chunk.token_id is not None or chunk.text:
                yield _sse(reply.event(chunk.text, None))
            if chunk.finish_reason is not None:
                if reply.error:
                    yield _sse({"error": {"message": reply.error, "type": "server_error"}})
                else:
                    yield _sse(reply.event("" if not reply.chat else {}, reply.finish_reason))
                if include_usage:
                    yield _sse(reply.usage_event())
                yield "data: [DONE]\n\n"
    finally:
        await received.aclose()
        disconnected.cancel()


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class _Reply:
    """Accumulates one request's chunks and shapes OpenAI's response objects."""

    def __init__(self, request_id: str, model: str, chat: bool, prompt_tokens: int) -> None:
        self.id = request_id
        self.model = model
        self.chat = chat
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.error: str | None = None

    def add(self, chunk: Chunk) -> None:
        if chunk.token_id is not None:
            self.completion_tokens += 1
        if chunk.text:
            self.parts.append(chunk.text)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
            self.error = chunk.error if chunk.finish_reason == "error" else None

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def _envelope(self, streaming: bool) -> dict[str, Any]:
        if self.chat:
            kind = "chat.completion.chunk" if streaming else "chat.completion"
        else:
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def event(self, delta: str | dict[str, str], finish_reason: str | None) -> dict[str, Any]:
        if self.chat:
            delta = {"content": delta} if isinstance(delta, str) else delta
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self._envelope(True), "choices": [choice]}

    def usage_event(self) -> dict[str, Any]:
        return {**self._envelope(True), "choices": [], "usage": self.usage()}

    def whole(self) -> dict[str, Any]:
        text = "".join(self.parts)
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": self.finish_reason,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": self.finish_reason,
            }
        return {**self._envelope(False), "choices": [choice], "usage": self.usage()}


# -- the process ---------------------------------------------------------------------------


class _DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains (readiness 503 first) instead of stopping."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self._runtime = runtime
        self._drain_started = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Not recording the signal keeps uvicorn from re-raising it after shutdown, so a
        # drained process exits 0.
        if self._drain_started:
            self.force_exit = True
            self.should_exit = True
            return
        self._drain_started = True
        loop = self._runtime.loop
        if loop is None:
            self.should_exit = True
            return
        loop.call_soon_threadsafe(lambda: loop.create_task(self._runtime.drain()))


def serve(config: ServeConfig) -> int:
    """Run the server until drained or the load fails; return the process exit code."""
    runtime = Runtime(config)
    app = create_app(runtime)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    server = _DrainingServer(uv_config, runtime)

    def request_exit() -> None:
        server.should_exit = True

    runtime.request_exit = request_exit
    log.info("listening on %s:%d; loading %s", config.host, config.port, config.model_path)
    server.run()
    return runtime.exit_code
