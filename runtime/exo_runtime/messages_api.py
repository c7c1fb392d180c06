"""Anthropic's Messages API (`POST /v1/messages`): its body, its checks, its replies and errors.

Text in, text out: a system prompt and user/assistant turns are rendered through the model's chat
template (a final assistant turn is continued, as Anthropic's prefill), and the answer is one text
block, whole or as Anthropic's stream of events. Submitting, disconnects and cancelling are the
serving path's (serving.py), shared with the OpenAI routes, and so are the body, prompt and
context checks. Every error on this path, whoever raised it, is answered in Anthropic's shape by
`AnthropicErrors`.
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
from exo_runtime.serving import ready_engine, receive, submit
from exo_runtime.stop_strings import StopStringFilter
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
    """One block of a message or of the system prompt; only text blocks are served."""

    model_config = ConfigDict(extra="allow")  # image, document, tool_result ... refused by name

    type: str
    text: str | None = None


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


def _tool_choice(value: Any) -> bool:
    return value is not None and value.get("type") not in ("auto", "none")


def _thinking(value: Any) -> bool:
    return value is not None and value.get("type") != "disabled"


def _output_config(value: Any) -> bool:
    return value is not None and any(v is not None for v in value.values())


UNSUPPORTED_MESSAGE_FIELDS: tuple[Unsupported, ...] = (
    # Issue 15 item 3 brings tool use to both surfaces.
    Unsupported("tools", bool, "tool use"),
    Unsupported("tool_choice", _tool_choice, "tool use"),
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
    turns = conversation(body)
    limit = runtime.config.limits.max_prompt_bytes
    check_size(sum(len(t["content"].encode()) for t in turns), limit, "messages")
    # A final assistant turn is a prefill: the answer continues it, so it is not closed.
    prefill = turns.pop()["content"] if turns[-1]["role"] == "assistant" else ""
    try:
        prompt = template.render(turns, add_generation_prompt=True) + prefill
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
    return PreparedMessage(body, prompt_tokens, params, context_bound=body.max_tokens > room)


def conversation(body: MessagesBody) -> list[dict[str, str]]:
    """The system prompt and turns as a chat template wants them: role and text."""
    if not body.messages:
        raise OpenAIError(400, "messages must hold at least one message", param="messages")
    turns = []
    if body.system:
        system = _block_text(body.system, "system")
        if system:
            turns.append({"role": "system", "content": system})
    last = len(body.messages) - 1
    for i, message in enumerate(body.messages):
        text = _block_text(message.content, f"messages[{i}].content")
        if not text and not (i == last and message.role == "assistant"):
            raise OpenAIError(
                400,
                f"messages[{i}]: all messages must have non-empty content except for the "
                "optional final assistant message",
                param=f"messages[{i}].content",
                code="invalid_value",
            )
        turns.append({"role": message.role, "content": text})
    return turns


def _block_text(content: str | list[ContentBlock], param: str) -> str:
    if isinstance(content, str):
        return content
    pieces = []
    for j, block in enumerate(content):
        where = f"{param}[{j}]"
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
    )
    if body.stream:
        return StreamingResponse(
            _events(reply, received),
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
    return JSONResponse(reply.message(reply.text()))


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
            self.failure = OpenAIError(500, f"generation failed: {chunk.error}")

    def text(self) -> str:
        return "".join(self._parts)

    def message(self, text: str | None) -> dict[str, Any]:
        """The message object: whole with `text`, or the empty one that opens a stream."""
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [] if text is None else [_text_block(text)],
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
