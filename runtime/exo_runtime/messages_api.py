"""Anthropic's Messages API (`POST /v1/messages`): its body, its checks, its replies and errors.

A system prompt and user/assistant turns are rendered through the model's chat template (a final
assistant turn is continued, as Anthropic's prefill), and the answer is a text block, whole or as
Anthropic's stream of events. Tool use takes the OpenAI route's path (tool_request.py): `tools`
and `tool_choice` (`auto`, `any`, `tool`, `none`) become OpenAI's, `tool_use` blocks in and
`tool_result` blocks become the template's tool calls and tool turns, and the calls parsed out of
the answer come back as `tool_use` blocks with stop_reason `tool_use`.

Submitting, disconnects and cancelling are the serving path's (serving.py), shared with the OpenAI
routes, and so are the body, prompt and context checks. Every error on this path, whoever raised
it, is answered in Anthropic's shape by `AnthropicErrors`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exo_runtime.chat_template import ChatTemplateError
from exo_runtime.engine import Chunk, GenerationRequest, SamplingParams
from exo_runtime.openai_api import OpenAIError
from exo_runtime.request_checks import check_size, parse_body
from exo_runtime.serving import (
    engine_constrains_output,
    ready_engine,
    receive,
    submit,
    with_tool_grammar,
)
from exo_runtime.stop_strings import StopStringFilter
from exo_runtime.tool_calls import ToolCall, ToolCallFormat
from exo_runtime.tool_request import FUNCTION_NAME, plan_tools
from exo_runtime.tool_stream import ToolCallStream
from exo_runtime.unsupported import Unsupported

if TYPE_CHECKING:
    from exo_runtime.server import Runtime

MESSAGES_PATH = "/v1/messages"

# Stop sequences are matched here, on the event loop, at a cost that grows with their number and
# length; Anthropic documents no bound, so these keep a hostile list cheap.
MAX_STOP_SEQUENCES = 16
MAX_STOP_SEQUENCE_CHARS = 256


# -- the request -----------------------------------------------------------------------------


class ContentBlock(BaseModel):
    """One block of a message or of the system prompt: text, tool_use and tool_result are
    served."""

    model_config = ConfigDict(extra="allow")  # image, document ... refused by name

    type: str
    text: str | None = None
    # tool_use
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    # tool_result
    tool_use_id: str | None = None
    content: str | list[ContentBlock] | None = None
    is_error: bool | None = None


class MessageTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class RequestMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = None


class MessagesBody(BaseModel):
    """Every field Anthropic's `messages.create` takes: honoured, accepted as harmless, or
    refused by name (`UNSUPPORTED_MESSAGE_FIELDS`); any other field is refused."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int = Field(ge=1)
    messages: list[MessageTurn]
    system: str | list[ContentBlock] | None = None
    stop_sequences: list[str] | None = Field(default=None, max_length=MAX_STOP_SEQUENCES)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool | None = False
    # Accepted and not acted on: they ask for nothing that changes the answer.
    metadata: RequestMetadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    cache_control: dict[str, Any] | None = None  # prompt caching is a hint, not a result
    inference_geo: str | None = None
    speed: Literal["standard", "fast"] | None = None
    # Refused when they ask for something (see UNSUPPORTED_MESSAGE_FIELDS).
    top_k: int | None = Field(default=None, ge=0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    container: str | dict[str, Any] | None = None
    context_management: dict[str, Any] | None = None
    mcp_servers: list[dict[str, Any]] | None = None
    diagnostics: dict[str, Any] | None = None


def _given(value: Any) -> bool:
    return value is not None


def _thinking(value: Any) -> bool:
    return value is not None and value.get("type") != "disabled"


def _output_config(value: Any) -> bool:
    return value is not None and any(v is not None for v in value.values())


UNSUPPORTED_MESSAGE_FIELDS: tuple[Unsupported, ...] = (
    Unsupported("top_k", _given, "top_k sampling"),
    Unsupported("thinking", _thinking, "extended thinking (not a reasoning model)"),
    Unsupported("output_config", _output_config, "output effort or structured output"),
    Unsupported("container", _given, "containers (code execution)"),
    Unsupported("context_management", _given, "context management"),
    Unsupported("mcp_servers", bool, "MCP servers"),
    Unsupported("diagnostics", _given, "diagnostics"),
)


def refuse_unsupported_message_fields(body: MessagesBody) -> None:
    for row in UNSUPPORTED_MESSAGE_FIELDS:
        if row.asks(getattr(body, row.field)):
            raise OpenAIError(
                400,
                f"{row.field}: this server does not support {row.what} yet; leave {row.field} out",
                param=row.field,
                code="unsupported_parameter",
            )


@dataclass(frozen=True)
class PreparedMessage:
    """A Messages request checked, templated and tokenized: ready for the scheduler."""

    body: MessagesBody
    prompt_tokens: list[int]
    params: SamplingParams
    # max_tokens was lowered to the room left in the context: reaching it means the context is
    # full, which Anthropic calls model_context_window_exceeded.
    context_bound: bool
    tool_format: ToolCallFormat | None = None  # parse tool calls out of the answer


def prepare_message(runtime: Runtime, raw: bytes) -> PreparedMessage:
    """Parse, check, template and tokenize (on a worker thread, like the OpenAI routes)."""
    body = parse_body(raw, MessagesBody)
    refuse_unsupported_message_fields(body)
    for i, stop in enumerate(body.stop_sequences or ()):
        if not stop or len(stop) > MAX_STOP_SEQUENCE_CHARS:
            raise OpenAIError(
                400,
                f"stop_sequences[{i}] must be 1 to {MAX_STOP_SEQUENCE_CHARS} characters",
                param=f"stop_sequences[{i}]",
                code="invalid_value",
            )
    engine = ready_engine(runtime, body.model)
    template = runtime.state.chat_template
    if template is None:
        raise OpenAIError(
            400,
            f"model {runtime.config.served_name} has no chat template: start the runtime with "
            "--chat-template",
            param="messages",
            code="no_chat_template",
        )
    tools = plan_tools(
        openai_tools(body.tools),
        openai_tool_choice(body.tool_choice),
        template,
        engine.architecture(),
        can_constrain=engine_constrains_output(engine),
    )
    turns = conversation(body)
    limit = runtime.config.limits.max_prompt_bytes
    check_size(sum(len(t["content"].encode()) for t in turns), limit, "messages")
    # A final assistant turn is a prefill: the answer continues it, so it is not closed.
    last = turns[-1]
    prefill = (
        turns.pop()["content"] if last["role"] == "assistant" and "tool_calls" not in last else ""
    )
    try:
        prompt = template.render(turns, add_generation_prompt=True, tools=tools.tools) + prefill
    except ChatTemplateError as err:
        raise OpenAIError(400, str(err), param="messages") from err
    check_size(len(prompt.encode()), limit, "messages")
    prompt_tokens = engine.tokenize(prompt, add_special=False)
    room = engine.context_length - len(prompt_tokens)
    if room <= 0:
        raise OpenAIError(
            400,
            f"prompt is too long: {len(prompt_tokens)} tokens >= {engine.context_length}, the "
            "context this server gives a sequence",
            param="messages",
            code="context_length_exceeded",
        )
    params = SamplingParams(
        max_tokens=min(body.max_tokens, room),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
    )
    params = with_tool_grammar(engine, params, tools)
    return PreparedMessage(
        body, prompt_tokens, params, context_bound=body.max_tokens > room, tool_format=tools.format
    )


def openai_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Anthropic's client tools as OpenAI's function tools (the template's shape)."""
    if tools is None:
        return None
    converted = []
    for i, tool in enumerate(tools):
        if tool.get("type", "custom") != "custom":
            raise OpenAIError(
                400,
                f"tools[{i}] is a {tool['type']!r} server tool; this server runs only the "
                "client tools you define (name, description, input_schema)",
                param=f"tools[{i}].type",
                code="unsupported_parameter",
            )
        if not isinstance(tool.get("input_schema"), dict):
            raise OpenAIError(
                400, f"tools[{i}].input_schema must be a JSON schema object",
                param=f"tools[{i}].input_schema", code="invalid_value",
            )  # fmt: skip
        function = {"name": tool.get("name"), "parameters": tool["input_schema"]}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        converted.append({"type": "function", "function": function})
    return converted


def openai_tool_choice(choice: dict[str, Any] | None) -> str | dict[str, Any] | None:
    """Anthropic's tool_choice as OpenAI's: auto, any (required), tool (named), none."""
    if choice is None:
        return None
    kind = choice.get("type")
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise OpenAIError(
        400,
        f"tool_choice.type must be auto, any, tool or none, not {kind!r}",
        param="tool_choice.type",
        code="invalid_value",
    )


def conversation(body: MessagesBody) -> list[dict[str, Any]]:
    """The system prompt and turns as a chat template wants them: role and text, an assistant's
    tool calls (its tool_use blocks) and a tool turn per tool_result block."""
    if not body.messages:
        raise OpenAIError(400, "messages must hold at least one message", param="messages")
    turns = []
    if body.system:
        system = _block_text(body.system, "system")
        if system:
            turns.append({"role": "system", "content": system})
    last = len(body.messages) - 1
    for i, message in enumerate(body.messages):
        where = f"messages[{i}].content"
        blocks = [] if isinstance(message.content, str) else message.content
        results = [(j, b) for j, b in enumerate(blocks) if b.type == "tool_result"]
        calls = [(j, b) for j, b in enumerate(blocks) if b.type == "tool_use"]
        misplaced = (results if message.role != "user" else []) + (
            calls if message.role != "assistant" else []
        )
        if misplaced:
            j, block = misplaced[0]
            raise OpenAIError(
                400,
                f"{where}[{j}]: {block.type} blocks belong in "
                f"{'user' if block.type == 'tool_result' else 'assistant'} messages",
                param=f"{where}[{j}]",
                code="invalid_value",
            )
        turns.extend(_tool_result_turn(block, f"{where}[{j}]") for j, block in results)
        text = _block_text(message.content, where, skip=("tool_use", "tool_result"))
        if not text and not (results or calls) and not (i == last and message.role == "assistant"):
            raise OpenAIError(
                400,
                f"messages[{i}]: all messages must have non-empty content except for the "
                "optional final assistant message",
                param=where,
                code="invalid_value",
            )
        if calls:
            tool_calls = [_tool_use_call(block, f"{where}[{j}]") for j, block in calls]
            turns.append({"role": "assistant", "content": text, "tool_calls": tool_calls})
        elif text or not results:
            turns.append({"role": message.role, "content": text})
    return turns


def _tool_use_call(block: ContentBlock, where: str) -> dict[str, Any]:
    if not isinstance(block.name, str) or not FUNCTION_NAME.fullmatch(block.name):
        raise OpenAIError(
            400, f"{where}.name must be 1 to 64 letters, digits, underscores or dashes",
            param=f"{where}.name", code="invalid_value",
        )  # fmt: skip
    if block.id is None or block.input is None:
        raise OpenAIError(
            400, f"{where}: a tool_use block needs id and input", param=where,
            code="invalid_value",
        )  # fmt: skip
    return {
        "id": block.id,
        "type": "function",
        "function": {"name": block.name, "arguments": block.input},
    }


def _tool_result_turn(block: ContentBlock, where: str) -> dict[str, Any]:
    if block.tool_use_id is None:
        raise OpenAIError(
            400, f"{where}.tool_use_id is missing", param=f"{where}.tool_use_id",
            code="invalid_value",
        )  # fmt: skip
    content = block.content if block.content is not None else ""
    text = _block_text(content, f"{where}.content")
    if block.is_error:
        text = f"Error: {text}"  # templates have no error flag; the model reads it in the text
    return {"role": "tool", "content": text, "tool_call_id": block.tool_use_id}


def _block_text(
    content: str | list[ContentBlock], param: str, *, skip: tuple[str, ...] = ()
) -> str:
    if isinstance(content, str):
        return content
    pieces = []
    for j, block in enumerate(content):
        where = f"{param}[{j}]"
        if block.type in skip:
            continue
        if block.type != "text":
            raise OpenAIError(
                400,
                f"{where} is a {block.type!r} block; this server reads only text blocks",
                param=where,
                code="unsupported_content_type",
            )
        if block.text is None:
            raise OpenAIError(400, f"{where}.text is missing", param=f"{where}.text")
        pieces.append(block.text)
    return "".join(pieces)


# -- the reply -------------------------------------------------------------------------------


async def create_message(runtime: Runtime, request: Request, prepared: PreparedMessage) -> Response:
    """Generate the answer: one message object, or Anthropic's events when `stream` is set."""
    body = prepared.body
    message_id = "msg_" + uuid.uuid4().hex
    chunks = submit(runtime, GenerationRequest(message_id, prepared.prompt_tokens, prepared.params))
    received = receive(runtime, request, chunks, message_id)
    reply = _MessageReply(
        message_id,
        body.model,
        len(prepared.prompt_tokens),
        tuple(body.stop_sequences or ()),
        prepared.context_bound,
        prepared.tool_format,
    )
    if body.stream:
        events = _events if prepared.tool_format is None else _tool_events
        return StreamingResponse(
            events(reply, received),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    try:
        async for chunk in received:
            reply.add(chunk)
            if reply.ended:
                break  # a stop sequence: leaving the loop cancels the sequence
    finally:
        await received.aclose()
    if reply.failure is not None:
        raise reply.failure
    return JSONResponse(reply.message(reply.content_blocks()))


async def _events(reply: _MessageReply, received: AsyncIterator[Chunk]) -> AsyncIterator[str]:
    try:
        yield _sse("message_start", {"type": "message_start", "message": reply.message(None)})
        start = {"type": "content_block_start", "index": 0, "content_block": _text_block("")}
        yield _sse("content_block_start", start)
        yield _sse("ping", {"type": "ping"})
        async for chunk in received:
            text = reply.add(chunk)
            if text:
                delta = {"type": "text_delta", "text": text}
                yield _sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                )
            if reply.ended:
                break
        if not reply.ended:
            return  # the client went away
        if reply.failure is not None:
            yield _sse("error", anthropic_error_body(reply.failure.status, reply.failure.message))
            return
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence},
                "usage": {"output_tokens": reply.output_tokens},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})
    finally:
        await received.aclose()


async def _tool_events(reply: _MessageReply, received: AsyncIterator[Chunk]) -> AsyncIterator[str]:
    """The stream of an answer that may hold tool calls: blocks open as their content comes, a
    text block for text, a tool_use block (its input as one input_json_delta) per call."""
    blocks = _BlockEvents(ToolCallStream(reply.tool_format))
    try:
        yield _sse("message_start", {"type": "message_start", "message": reply.message(None)})
        yield _sse("ping", {"type": "ping"})
        async for chunk in received:
            for event in blocks.feed(reply.add(chunk), last=reply.ended):
                yield event
            if reply.ended:
                break
        if not reply.ended:
            return  # the client went away
        if reply.failure is not None:
            yield _sse("error", anthropic_error_body(reply.failure.status, reply.failure.message))
            return
        for event in blocks.close():
            yield event
        if blocks.calls:
            reply.stop_reason = _tool_use_stop(reply.stop_reason)
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence},
                "usage": {"output_tokens": reply.output_tokens},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})
    finally:
        await received.aclose()


class _BlockEvents:
    """Turns the text and calls a ToolCallStream lets through into content block events."""

    def __init__(self, stream: ToolCallStream) -> None:
        self._stream = stream
        self._index = 0
        self._text_open = False
        self.calls = 0

    def feed(self, text: str, *, last: bool) -> list[str]:
        deltas = self._stream.feed(text)
        if last:
            end = self._stream.finish()
            deltas.content += end.content
            deltas.calls += end.calls
        events = []
        if deltas.content:
            if not self._text_open:
                events.append(self._start(_text_block("")))
                self._text_open = True
            delta = {"type": "text_delta", "text": deltas.content}
            events.append(self._delta(delta))
        for _, call in deltas.calls:
            events += self.close()
            block = {**_tool_use_block(call), "input": {}}
            events.append(self._start(block))
            events.append(self._delta({"type": "input_json_delta", "partial_json": call.arguments}))
            events += self._stop()
            self.calls += 1
        return events

    def close(self) -> list[str]:
        """Close the text block, if one is open."""
        if not self._text_open:
            return []
        self._text_open = False
        return self._stop()

    def _start(self, block: dict[str, Any]) -> str:
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return _sse("content_block_start", start)

    def _delta(self, delta: dict[str, Any]) -> str:
        event = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return _sse("content_block_delta", event)

    def _stop(self) -> list[str]:
        event = _sse("content_block_stop", {"type": "content_block_stop", "index": self._index})
        self._index += 1
        return [event]


def _tool_use_block(call: ToolCall) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": "toolu_" + call.id.removeprefix("call_"),
        "name": call.name,
        "input": json.loads(call.arguments),
    }


def _tool_use_stop(stop_reason: str | None) -> str | None:
    """A message that ended by itself after its calls stops for "tool_use"."""
    return "tool_use" if stop_reason == "end_turn" else stop_reason


def _sse(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _text_block(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


class _MessageReply:
    """Accumulates one message's chunks, matches its stop sequences, shapes Anthropic's objects."""

    def __init__(
        self,
        message_id: str,
        model: str,
        input_tokens: int,
        stop_sequences: tuple[str, ...],
        context_bound: bool,
        tool_format: ToolCallFormat | None = None,
    ) -> None:
        self.id = message_id
        self.model = model
        self.input_tokens = input_tokens
        self.output_tokens = 0
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.failure: OpenAIError | None = None
        self._stop_sequences = stop_sequences
        self._filter = StopStringFilter(stop_sequences)
        self._held = ""  # what the filter holds back: the matched stop sequence is read from it
        self._parts: list[str] = []
        self._context_bound = context_bound
        self.tool_format = tool_format

    @property
    def ended(self) -> bool:
        return self.stop_reason is not None or self.failure is not None

    def add(self, chunk: Chunk) -> str:
        """The text this chunk lets through; at the message's end, `stop_reason` is set."""
        if chunk.token_id is not None:
            self.output_tokens += 1
        fed = self._held + chunk.text
        text, stopped = self._filter.feed(chunk.text)
        self._held = fed[len(text) :]
        if stopped:
            self.stop_reason = "stop_sequence"
            self.stop_sequence = next(s for s in self._stop_sequences if self._held.startswith(s))
        elif chunk.finish_reason is not None:
            text += self._filter.flush()
            self._finish(chunk)
        self._parts.append(text)
        return text

    def _finish(self, chunk: Chunk) -> None:
        if chunk.finish_reason == "stop":
            self.stop_reason = "end_turn"
        elif chunk.finish_reason == "length":
            self.stop_reason = (
                "model_context_window_exceeded" if self._context_bound else "max_tokens"
            )
        elif chunk.finish_reason == "cancelled":
            # Only a drain that ran out of time cancels a sequence someone still reads.
            self.failure = OpenAIError(
                503, "the server cancelled this generation while shutting down; retry"
            )
        else:
            if chunk.error_param:
                self.failure = OpenAIError(400, chunk.error or "", param=chunk.error_param)
            else:
                self.failure = OpenAIError(500, f"generation failed: {chunk.error}")

    def text(self) -> str:
        return "".join(self._parts)

    def content_blocks(self) -> list[dict[str, Any]]:
        """The whole answer's blocks: its text, and a tool_use block per call parsed out of it
        (the stop reason turns "tool_use")."""
        text = self.text()
        parsed = self.tool_format.parse(text) if self.tool_format else None
        if parsed is None or not parsed.calls:
            return [_text_block(text)]
        self.stop_reason = _tool_use_stop(self.stop_reason)
        blocks = [_text_block(parsed.content)] if parsed.content else []
        return blocks + [_tool_use_block(call) for call in parsed.calls]

    def message(self, content: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The message object: whole with its content blocks, or the empty one that opens a
        stream."""
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content or [],
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
        }


# -- errors ----------------------------------------------------------------------------------

# Anthropic's error types by status (https://docs.claude.com/en/api/errors); it answers an
# overloaded server with 529 where the OpenAI routes say 503.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_STATUS_FOR = {503: 529}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    status = _STATUS_FOR.get(status, status)
    fallback = "api_error" if status >= 500 else "invalid_request_error"
    return {
        "type": "error",
        "error": {"type": _ERROR_TYPES.get(status, fallback), "message": message},
    }


class AnthropicErrors:
    """ASGI middleware: on the Messages path, an error answered in OpenAI's shape (by a route, a
    handler or a middleware within) is answered in Anthropic's instead, with its status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (
            path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")
        ):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        body = b""

        async def reshape(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            body += message.get("body", b"")
            if message.get("more_body", False):
                return
            status, reshaped = _reshaped(start["status"], body)
            headers = [
                (k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(reshaped)).encode()))
            await send({**start, "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": reshaped})

        await self.app(scope, receive, reshape)


def _reshaped(status: int, body: bytes) -> tuple[int, bytes]:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode(errors="replace") or "error"
    error = anthropic_error_body(status, str(message))
    return _STATUS_FOR.get(status, status), json.dumps(error).encode()
