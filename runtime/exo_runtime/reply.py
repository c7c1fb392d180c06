"""OpenAI's response objects for one request: its choices' text, finish reasons, log
probabilities and usage, shaped as one reply or as streamed chunks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from exo_runtime.engine import Chunk, TokenLogprob
from exo_runtime.tool_calls import ToolCallFormat


def _text(token: bytes) -> str:
    return token.decode("utf-8", errors="replace")


def chat_logprob(logprob: TokenLogprob) -> dict[str, Any]:
    """One entry of `choices[].logprobs.content`."""
    return {
        "token": _text(logprob.token),
        "logprob": logprob.logprob,
        "bytes": list(logprob.token),
        "top_logprobs": [
            {"token": _text(token), "logprob": value, "bytes": list(token)}
            for token, value in logprob.top
        ],
    }


def completion_logprobs(entries: list[tuple[TokenLogprob, int]]) -> dict[str, Any]:
    """The legacy completions shape, from (token's log probability, its text offset) pairs."""
    return {
        "tokens": [_text(lp.token) for lp, _ in entries],
        "token_logprobs": [lp.logprob for lp, _ in entries],
        "top_logprobs": [{_text(t): v for t, v in lp.top} for lp, _ in entries],
        "text_offset": [offset for _, offset in entries],
    }


@dataclass
class _Choice:
    text_offset: int  # characters before the next token: the echoed prompt, then the tokens
    parts: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[tuple[TokenLogprob, int]] = field(default_factory=list)

    def add_logprob(self, logprob: TokenLogprob) -> tuple[TokenLogprob, int]:
        entry = (logprob, self.text_offset)
        self.logprobs.append(entry)
        self.text_offset += len(_text(logprob.token))
        return entry


class Reply:
    """Accumulates one request's chunks (n choices) and shapes OpenAI's response objects."""

    def __init__(
        self,
        request_id: str,
        model: str,
        chat: bool,
        prompt_tokens: int,
        *,
        n: int = 1,
        echo: str = "",
        logprobs: bool = False,
        tool_format: ToolCallFormat | None = None,
    ) -> None:
        self.id = request_id
        self.model = model
        self.chat = chat
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens  # counted once, however many choices share it
        self.cached_tokens = 0  # of those, how many the prefix cache held
        self.echo = echo
        self.logprobs = logprobs
        self.choices = [_Choice(text_offset=len(echo)) for _ in range(n)]
        self.tool_format = tool_format  # set: the answers' tool calls are parsed out of the text
        self.error: str | None = None
        self.error_param: str | None = None  # set: the request's own fault, naming its field

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason

    def add(self, chunk: Chunk) -> tuple[TokenLogprob, int] | None:
        """Take `chunk` in; return its log-probability entry (with its offset), if any."""
        choice = self.choices[chunk.index]
        if chunk.cached_tokens is not None and chunk.index == 0:
            self.cached_tokens = chunk.cached_tokens
        if chunk.token_id is not None:
            choice.completion_tokens += 1
        if chunk.text:
            choice.parts.append(chunk.text)
        if chunk.finish_reason is not None:
            choice.finish_reason = chunk.finish_reason
            if chunk.finish_reason == "error":
                self.error = chunk.error
                self.error_param = chunk.error_param
        if chunk.logprob is not None and self.logprobs:
            return choice.add_logprob(chunk.logprob)
        return None

    def usage(self) -> dict[str, Any]:
        completion = self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    def _envelope(self, streaming: bool) -> dict[str, Any]:
        if self.chat:
            kind = "chat.completion.chunk" if streaming else "chat.completion"
        else:
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _logprobs_block(self, entries: list[tuple[TokenLogprob, int]]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        if self.chat:
            return {"content": [chat_logprob(lp) for lp, _ in entries], "refusal": None}
        return completion_logprobs(entries)

    def event(
        self,
        index: int,
        delta: str | dict[str, str],
        finish_reason: str | None,
        entry: tuple[TokenLogprob, int] | None = None,
    ) -> dict[str, Any]:
        """One streamed chunk for choice `index`."""
        logprobs = self._logprobs_block([entry]) if entry is not None else None
        if self.chat:
            delta = {"content": delta} if isinstance(delta, str) else delta
            choice = {
                "index": index,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        else:
            choice = {
                "index": index,
                "text": delta,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        return {**self._envelope(True), "choices": [choice]}

    def usage_event(self) -> dict[str, Any]:
        return {**self._envelope(True), "choices": [], "usage": self.usage()}

    def whole(self) -> dict[str, Any]:
        choices = []
        for index, choice in enumerate(self.choices):
            text = self.echo + "".join(choice.parts)
            logprobs = self._logprobs_block(choice.logprobs)
            finish = choice.finish_reason
            if self.chat and self.tool_format is not None:
                message, finish = self._message_with_calls(text, finish)
                body = {"message": message}
            elif self.chat:
                body = {"message": {"role": "assistant", "content": text}}
            else:
                body = {"text": text}
            choices.append({"index": index, **body, "logprobs": logprobs, "finish_reason": finish})
        return {**self._envelope(False), "choices": choices, "usage": self.usage()}

    def _message_with_calls(
        self, text: str, finish: str | None
    ) -> tuple[dict[str, Any], str | None]:
        parsed = self.tool_format.parse(text)
        if not parsed.calls:
            return {"role": "assistant", "content": text}, finish
        message = {
            "role": "assistant",
            "content": parsed.content,
            "tool_calls": [call.openai() for call in parsed.calls],
        }
        return message, tool_calls_finish(finish)


def tool_calls_finish(finish: str | None) -> str | None:
    """An answer that ended by itself after its calls finishes with "tool_calls"."""
    return "tool_calls" if finish == "stop" else finish
