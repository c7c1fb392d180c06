"""A streamed answer split into text deltas and tool-call deltas as the tokens arrive.

Text before a call streams as it comes (holding back only what could be the start of a call
marker); a call is held until its end marker (or the answer's end, for formats without one),
parsed with its format's parser and then sent as OpenAI's deltas: the id, type and name first,
the arguments after. A call that does not parse is sent as text, as the whole-answer parser
would leave it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exo_runtime.tool_calls import ToolCall, ToolCallFormat


@dataclass
class ToolCallDeltas:
    """What one piece of the stream adds: text, and calls (each with its index in the answer)."""

    content: str = ""
    calls: list[tuple[int, ToolCall]] = field(default_factory=list)

    def openai(self) -> list[dict[str, Any]]:
        """OpenAI chat deltas: a content delta, then two per call (header, then arguments)."""
        deltas: list[dict[str, Any]] = []
        if self.content:
            deltas.append({"content": self.content})
        for index, call in self.calls:
            header = {"name": call.name, "arguments": ""}
            deltas.append(
                {"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                 "function": header}]}
            )  # fmt: skip
            deltas.append(
                {"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]}
            )
        return deltas


class ToolCallStream:
    """Feed it the answer's text piece by piece; `finish()` once at the end."""

    def __init__(self, fmt: ToolCallFormat) -> None:
        self._format = fmt
        self._buffer = ""
        self._in_call = False
        self._at_start = True  # nothing but whitespace sent yet (a bare JSON call may start)
        # Whitespace waits for the next text, so none is sent before, between or after calls.
        self._space = ""
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> ToolCallDeltas:
        self._buffer += text
        out = ToolCallDeltas()
        while True:
            if self._in_call:
                if not self._close_call(out):
                    return out
                continue
            start = self._call_start()
            if start is None:
                self._send_safe_text(out)
                return out
            self._send_text(out, self._buffer[:start])
            self._buffer = self._buffer[start:]
            self._in_call = True

    def finish(self) -> ToolCallDeltas:
        out = ToolCallDeltas()
        if self._in_call:
            self._parse_call(out, self._buffer)
        else:
            self._send_text(out, self._buffer)
        self._buffer = ""
        self._in_call = False
        return out

    def _call_start(self) -> int | None:
        if self._format.bare_json and self._at_start:
            stripped = self._buffer.lstrip()
            if stripped.startswith("{"):
                return len(self._buffer) - len(stripped)
            if not stripped:
                return None
        found = [i for i in (self._buffer.find(s) for s in self._format.starts) if i >= 0]
        return min(found) if found else None

    def _close_call(self, out: ToolCallDeltas) -> bool:
        """Parse the held call once its end marker is in; False while it is still coming."""
        end_marker = self._format.end
        if end_marker is None:
            return False  # runs to the end of the answer
        opened = next(s for s in (*self._format.starts, "") if self._buffer.startswith(s))
        end = self._buffer.find(end_marker, len(opened))
        if end < 0:
            return False
        end += len(end_marker)
        self._parse_call(out, self._buffer[:end])
        self._buffer = self._buffer[end:]
        self._in_call = False
        return True

    def _parse_call(self, out: ToolCallDeltas, text: str) -> None:
        parsed = self._format.parse(text)
        if not parsed.calls:
            self._send_text(out, text)
            return
        self._send_text(out, parsed.content or "")
        for call in parsed.calls:
            out.calls.append((len(self.calls), call))
            self.calls.append(call)
        self._at_start = False

    def _send_safe_text(self, out: ToolCallDeltas) -> None:
        """Send the buffer but the tail that may still grow into a call marker."""
        if self._format.bare_json and self._at_start and not self._buffer.strip():
            return
        hold = max(
            (
                n
                for s in self._format.starts
                for n in range(1, len(s))
                if self._buffer.endswith(s[:n])
            ),
            default=0,
        )
        self._send_text(out, self._buffer[: len(self._buffer) - hold])
        self._buffer = self._buffer[len(self._buffer) - hold :]

    def _send_text(self, out: ToolCallDeltas, text: str) -> None:
        if self._at_start:  # leading whitespace is dropped, as the whole-answer parser strips it
            text = text.lstrip()
        words = text.rstrip()
        if not words:
            self._space += text
            return
        out.content += self._space + words
        self._space = text[len(words) :]
        self._at_start = False
