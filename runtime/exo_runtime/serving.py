"""The serving path shared by both surfaces: prepare a request (off the event loop), submit it
to the scheduler, then stream its chunks as server-sent events or collect them into one reply.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from exo_runtime.chat_template import ChatTemplateError
from exo_runtime.engine import Chunk, Engine, GenerationRequest, SamplingParams
from exo_runtime.openai_api import ChatCompletionBody, CompletionBody, OpenAIError
from exo_runtime.reply import Reply, tool_calls_finish
from exo_runtime.request_checks import (
    check_size,
    check_token_ids,
    message_texts,
    parse_body,
)
from exo_runtime.scheduler import QueueFullError, Scheduler
from exo_runtime.structured import StructuredOutputError, grammar_for_response_format
from exo_runtime.tool_calls import ToolCallFormat
from exo_runtime.tool_request import NO_TOOLS, ToolPlan, plan_tools
from exo_runtime.tool_stream import ToolCallStream
from exo_runtime.unsupported import refuse_unsupported, refuse_unsupported_by_engine

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
    n: int = 1
    echo: str = ""  # text put before each choice's (completions' `echo`)
    tool_format: ToolCallFormat | None = None  # parse tool calls out of the answers


# -- preparing (runs on a worker thread: parsing, templates and tokenizing take time) ---------


def prepare_completion(runtime: Runtime, raw: bytes) -> Prepared:
    body = parse_body(raw, CompletionBody)
    refuse_unsupported(body)
    engine = ready_engine(runtime, body.model)
    refuse_unsupported_by_engine(body, engine.name)
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
    prepared = _prepared(runtime, engine, body, prompt_tokens, max_tokens, chat=False)
    if body.echo:
        if body.logprobs is not None:
            raise OpenAIError(
                400,
                "echo with logprobs would need the prompt's log probabilities, which this "
                "server does not compute; leave one of them out",
                param="echo",
                code="unsupported_parameter",
            )
        echo = prompt if isinstance(prompt, str) else engine.detokenize(prompt_tokens)
        prepared = replace(prepared, echo=echo)
    return prepared


def prepare_chat(runtime: Runtime, raw: bytes) -> Prepared:
    body = parse_body(raw, ChatCompletionBody)
    refuse_unsupported(body)
    engine = ready_engine(runtime, body.model)
    refuse_unsupported_by_engine(body, engine.name)
    if body.top_logprobs and not body.logprobs:
        raise OpenAIError(
            400,
            "top_logprobs needs logprobs: true",
            param="top_logprobs",
            code="invalid_value",
        )
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
    tools = plan_tools(
        body.tools,
        body.tool_choice,
        template,
        engine.architecture(),
        can_constrain=engine_constrains_output(engine),
    )
    limit = runtime.config.limits.max_prompt_bytes
    messages = message_texts(body.messages)
    check_size(sum(len(m["content"].encode()) for m in messages), limit, "messages")
    try:
        prompt = template.render(messages, add_generation_prompt=True, tools=tools.tools)
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
    prepared = _prepared(runtime, engine, body, prompt_tokens, max_tokens, chat=True)
    return with_tools(engine, prepared, tools)


def engine_constrains_output(engine: Engine) -> bool:
    """The engine applies a grammar per sequence (llama.cpp's grammar sampler)."""
    return engine.name == "llamacpp"


def with_tools(engine: Engine, prepared: Prepared, tools: ToolPlan) -> Prepared:
    if tools is NO_TOOLS:
        return prepared
    params = with_tool_grammar(engine, prepared.params, tools)
    return replace(prepared, params=params, tool_format=tools.format)


def with_tool_grammar(engine: Engine, params: SamplingParams, tools: ToolPlan) -> SamplingParams:
    """`params` constrained by the grammar that forces a call, if the plan has one."""
    if tools.grammar is None:
        return params
    if params.grammar is not None:
        raise OpenAIError(
            400,
            "tool_choice forces a tool call and response_format (or grammar) constrains the "
            "answer too: give one of them",
            param="tool_choice",
            code="invalid_value",
        )
    try:
        engine.check_grammar(tools.grammar)
    except ValueError as err:
        raise OpenAIError(
            400, f"tools: the forced call's grammar is refused: {err}", param="tools",
            code="invalid_value",
        ) from err  # fmt: skip
    return replace(params, grammar=tools.grammar, grammar_field="tool_choice")


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
    runtime: Runtime,
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
    logit_bias = tuple((int(token), bias) for token, bias in (body.logit_bias or {}).items())
    check_token_ids([token for token, _ in logit_bias], engine.vocab_size, "logit_bias")
    n = body.n or 1
    parallel = runtime.config.options.parallel
    if n > parallel:
        raise OpenAIError(
            400,
            f"n is {n}, but this server decodes at most {parallel} sequences at once "
            "(--parallel): ask for fewer choices",
            param="n",
            code="invalid_value",
        )
    # None: not asked; k: the chosen token's plus k alternatives.
    logprobs = body.logprobs if not chat else (body.top_logprobs or 0) if body.logprobs else None
    grammar, grammar_field = _grammar(engine, body)
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stop_strings(),
        stop_token_ids=stop_token_ids,
        top_k=max(body.top_k or 0, 0),
        min_p=body.min_p or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        logit_bias=logit_bias,
        logprobs=logprobs,
        grammar=grammar,
        grammar_field=grammar_field,
    )
    return Prepared(body, prompt_tokens, params, chat, n=n)


def _grammar(engine: Engine, body: CompletionBody | ChatCompletionBody) -> tuple[str | None, str]:
    """The grammar the body asks for (`response_format` or a raw `grammar`), which the engine
    has parsed, and the field it came from: a bad one is the client's 400 here, never a
    failure inside a batch."""
    try:
        from_format = grammar_for_response_format(getattr(body, "response_format", None))
    except StructuredOutputError as err:
        raise OpenAIError(400, str(err), param=err.param, code="invalid_value") from err
    raw = body.grammar or None  # "" asks for nothing, as in llama-server
    if raw is not None and from_format is not None:
        raise OpenAIError(
            400,
            "grammar and a structured response_format both constrain the answer: give one",
            param="grammar",
            code="invalid_value",
        )
    param = "grammar" if raw is not None else "response_format"
    grammar = raw or from_format
    if grammar is not None:
        try:
            engine.check_grammar(grammar)
        except ValueError as err:
            raise OpenAIError(400, f"{param}: {err}", param=param, code="invalid_value") from err
    return grammar, param


# -- generating ------------------------------------------------------------------------------


async def generate(runtime: Runtime, request: Request, prepared: Prepared) -> Response:
    """Submit the prepared request; stream its chunks or collect them into one reply."""
    scheduler = runtime.state.scheduler
    body, chat = prepared.body, prepared.chat
    request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    chunks = submit(
        runtime,
        GenerationRequest(request_id, prepared.prompt_tokens, prepared.params, prepared.n),
    )
    reply = Reply(
        request_id,
        body.model,
        chat,
        len(prepared.prompt_tokens),
        n=prepared.n,
        echo=prepared.echo,
        logprobs=prepared.params.logprobs is not None,
        tool_format=prepared.tool_format,
    )
    disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
    if body.stream:
        events = _stream_events(reply, chunks, disconnected, scheduler, body.include_usage)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    received = _chunks_until_disconnect(chunks, disconnected, scheduler, request_id, prepared.n)
    try:
        async for chunk in received:
            reply.add(chunk)
    finally:
        # Closing the generator now (not at garbage collection) cancels an unfinished sequence.
        await received.aclose()
        disconnected.cancel()
    if reply.error and reply.error_param:
        raise OpenAIError(400, reply.error, param=reply.error_param, code="invalid_value")
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
    n: int = 1,
) -> AsyncIterator[Chunk]:
    """The request's chunks up to its last (all n choices finished, or one failed); a client
    gone mid-way cancels its sequences at once."""
    finished = False
    choices_left = n
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
            if chunk.finish_reason is not None:
                choices_left -= 1
                finished = choices_left == 0 or chunk.finish_reason in ("error", "cancelled")
            yield chunk
            if finished:
                return
    finally:
        if not finished:
            scheduler.cancel(request_id)


async def _stream_events(
    reply: Reply,
    chunks: asyncio.Queue[Chunk],
    disconnected: asyncio.Future,
    scheduler: Scheduler,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Each choice's chunks as they come, interleaved and told apart by `index`."""
    n = len(reply.choices)
    received = _chunks_until_disconnect(chunks, disconnected, scheduler, reply.id, n)
    choices_left = n
    tool_streams = (
        [ToolCallStream(reply.tool_format) for _ in range(n)] if reply.tool_format else None
    )
    try:
        for index in range(n):
            if reply.chat:
                yield _sse(reply.event(index, {"role": "assistant", "content": ""}, None))
            elif reply.echo:
                yield _sse(reply.event(index, reply.echo, None))
        async for chunk in received:
            entry = reply.add(chunk)
            finish_reason = chunk.finish_reason
            if tool_streams is not None:
                stream = tool_streams[chunk.index]
                deltas = stream.feed(chunk.text).openai()
                if finish_reason is not None:
                    deltas += stream.finish().openai()
                    if stream.calls:
                        finish_reason = tool_calls_finish(finish_reason)
                if entry is not None and not deltas:
                    deltas = [{}]  # the token's log probability, its text held back
                for i, delta in enumerate(deltas):
                    yield _sse(reply.event(chunk.index, delta, None, entry if i == 0 else None))
            elif chunk.token_id is not None or chunk.text:
                yield _sse(reply.event(chunk.index, chunk.text, None, entry))
            if finish_reason is None:
                continue
            choices_left -= 1
            if reply.error:
                kind = "invalid_request_error" if reply.error_param else "server_error"
                error = {"message": reply.error, "type": kind, "param": reply.error_param}
                yield _sse({"error": error})
            else:
                empty = "" if not reply.chat else {}
                yield _sse(reply.event(chunk.index, empty, finish_reason))
            if choices_left == 0 or chunk.finish_reason in ("error", "cancelled"):
                if include_usage:
                    yield _sse(reply.usage_event())
                yield "data: [DONE]\n\n"
    finally:
        await received.aclose()
        disconnected.cancel()


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
