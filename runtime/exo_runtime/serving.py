"""The serving path shared by both surfaces: prepare a request (off the event loop), submit it
to the scheduler, then stream its chunks as server-sent events or collect them into one reply.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from exo_runtime.chat_template import ChatTemplateError
from exo_runtime.engine import Chunk, Engine, GenerationRequest, SamplingParams
from exo_runtime.openai_api import ChatCompletionBody, CompletionBody, OpenAIError
from exo_runtime.request_checks import (
    check_size,
    check_token_ids,
    message_texts,
    parse_body,
)
from exo_runtime.scheduler import QueueFullError, Scheduler
from exo_runtime.unsupported import refuse_unsupported

if TYPE_CHECKING:
    from exo_runtime.server import Runtime

# OpenAI's legacy completions default; chat defaults to the room left in the context.
DEFAULT_COMPLETION_MAX_TOKENS = 16


@dataclass(frozen=True)
class Prepared:
    """A request checked, templated and tokenized: ready for the scheduler."""

    body: CompletionBody | ChatCompletionBody
    prompt_tokens: list[int]
    params: SamplingParams
    chat: bool


# -- preparing (runs on a worker thread: parsing, templates and tokenizing take time) ---------


def prepare_completion(runtime: Runtime, raw: bytes) -> Prepared:
    body = parse_body(raw, CompletionBody)
    refuse_unsupported(body)
    engine = ready_engine(runtime, body.model)
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        check_token_ids(prompt, engine.vocab_size, "prompt")
        prompt_tokens = list(prompt)
    else:
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
        check_size(len(prompt.encode()), runtime.config.limits.max_prompt_bytes, "prompt")
        prompt_tokens = engine.tokenize(prompt, add_special=True)
    max_tokens = body.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS
    return _prepared(engine, body, prompt_tokens, max_tokens, chat=False)


def prepare_chat(runtime: Runtime, raw: bytes) -> Prepared:
    body = parse_body(raw, ChatCompletionBody)
    refuse_unsupported(body)
    engine = ready_engine(runtime, body.model)
    if (
        body.max_tokens
        and body.max_completion_tokens
        and body.max_tokens != body.max_completion_tokens
    ):
        raise OpenAIError(
            400,
            f"max_tokens ({body.max_tokens}) and max_completion_tokens "
            f"({body.max_completion_tokens}) disagree: give one of them",
            param="max_completion_tokens",
            code="invalid_value",
        )
    if not body.messages:
        raise OpenAIError(400, "messages must hold at least one message", param="messages")
    template = runtime.state.chat_template
    if template is None:
        raise OpenAIError(
            400,
            f"model {runtime.config.served_name} has no chat template (none in the model, none "
            "built in for its architecture): start the runtime with --chat-template, or "
            "use /v1/completions",
            param="messages",
            code="no_chat_template",
        )
    limit = runtime.config.limits.max_prompt_bytes
    messages = message_texts(body.messages)
    check_size(sum(len(m["content"].encode()) for m in messages), limit, "messages")
    try:
        prompt = template.render(messages, add_generation_prompt=True)
    except ChatTemplateError as err:
        raise OpenAIError(400, str(err), param="messages") from err
    check_size(len(prompt.encode()), limit, "messages")
    # Tokenizing reads the vocabulary only, never the context the scheduler thread drives.
    prompt_tokens = engine.tokenize(prompt, add_special=False)
    max_tokens = (
        body.max_completion_tokens
        or body.max_tokens
        or max(1, engine.context_length - len(prompt_tokens))
    )
    return _prepared(engine, body, prompt_tokens, max_tokens, chat=True)


def ready_engine(runtime: Runtime, model: str) -> Engine:
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


def _prepared(
    engine: Engine,
    body: CompletionBody | ChatCompletionBody,
    prompt_tokens: list[int],
    max_tokens: int,
    *,
    chat: bool,
) -> Prepared:
    context = engine.context_length
    max_param = "max_completion_tokens" if chat and body.max_completion_tokens else "max_tokens"
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
            f"{max_param} ({max_tokens}) needs {len(prompt_tokens) + max_tokens}: "
            f"lower {max_param}",
            param=max_param,
            code="context_length_exceeded",
        )
    stop_token_ids = tuple(body.stop_token_ids or ())
    check_token_ids(stop_token_ids, engine.vocab_size, "stop_token_ids")
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stop_strings(),
        stop_token_ids=stop_token_ids,
    )
    return Prepared(body, prompt_tokens, params, chat)


# -- generating ------------------------------------------------------------------------------


async def generate(runtime: Runtime, request: Request, prepared: Prepared) -> Response:
    """Submit the prepared request; stream its chunks or collect them into one reply."""
    scheduler = runtime.state.scheduler
    body, chat = prepared.body, prepared.chat
    request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    chunks = submit(runtime, GenerationRequest(request_id, prepared.prompt_tokens, prepared.params))
    reply = _Reply(request_id, body.model, chat, len(prepared.prompt_tokens))
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


def submit(runtime: Runtime, generation: GenerationRequest) -> asyncio.Queue[Chunk]:
    """Hand one sequence to the scheduler; its chunks arrive on the queue. A full queue is a 429."""
    try:
        return runtime.state.scheduler.submit(generation)
    except QueueFullError as err:
        raise OpenAIError(
            429,
            f"the server is busy: {err}; retry later",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(err.retry_after)},
        ) from err


async def receive(
    runtime: Runtime, request: Request, chunks: asyncio.Queue[Chunk], request_id: str
) -> AsyncIterator[Chunk]:
    """The sequence's chunks up to its last, for a surface that shapes its own replies; a client
    gone, or a caller that stops iterating (a stop sequence it matched), cancels the sequence."""
    scheduler = runtime.state.scheduler
    disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
    received = _chunks_until_disconnect(chunks, disconnected, scheduler, request_id)
    try:
        async for chunk in received:
            yield chunk
    finally:
        await received.aclose()
        disconnected.cancel()


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
